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
    default_os_sku: str | None = None
    """OS image when neither the claim nor its node class says (azure: Ubuntu)."""
    max_concurrent_reconciles: int = 10
    """Claims are independent and most of a reconcile waits on the cloud."""
