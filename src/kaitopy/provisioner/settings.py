"""The provisioner's tunables."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProvisionerSettings:
    launch_timeout_s: float = 1800.0
    """A GPU agent pool takes 5-15 minutes on AKS; past 30 the claim is deleted (with an Event)."""
    registration_timeout_s: float = 900.0
    """From launch to the Node joining; a node that never joins is usually a broken image or network."""
    poll_interval_s: float = 5.0
    """How often a launch or deletion in flight is looked at: one cheap GET per claim."""
    gc_interval_s: float = 120.0
    """How often cloud instances are matched against NodeClaims to find leaked ones."""
    gc_grace_s: float = 120.0
    """An instance younger than this is never collected: its claim may not be in the cache yet."""
    liveness_interval_s: float = 30.0
    """How often launched claims are matched against the provider's instances to find lost nodes
    (an instance deleted or failed under a live claim): one list call per pass."""
    node_repair_after_s: float = 600.0
    """A launched node that stays NotReady (Ready False or Unknown) this long while its instance
    still runs is replaced, as Karpenter's node repair does (its tolerations are 10-30 minutes):
    the node lifecycle controller only evicts its pods, and without a node they stay Pending.
    Counted from when this process first saw it unhealthy, so clock skew cannot shorten it. 0
    turns repair off."""
    repair_max_fraction: float = 0.2
    """Repair stops while more than this share of the launched nodes is unhealthy (at least one
    may always be repaired): many nodes failing at once is the control plane's or the network's
    trouble, and replacing them all would only add to it (Karpenter's 20% rule)."""
    stuck_pod_grace_s: float = 60.0
    """A drain stops waiting for a pod this long after its deletion time (its grace period
    included): a pod that has not gone by then sits on a node that cannot stop it (Karpenter
    ignores such pods after 1 minute too). It is force-deleted once the node is gone."""
    default_os_sku: str | None = None
    """OS image when neither the claim nor its node class says (azure: Ubuntu)."""
    max_concurrent_reconciles: int = 10
    """Claims are independent and most of a reconcile waits on the cloud."""
