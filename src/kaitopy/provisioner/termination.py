"""A NodeClaim's termination as a pure decision (Karpenter's order: drain the node, delete the
instance, delete the Node, then let the claim go). The lifecycle observes the claim, its Node, its
instance and, where a drain is possible, the pods on the Node; `decide_termination` says what to
do; the lifecycle does it. Each pass looks once and requeues, as the launch does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kaitopy.runtime.conditions import Status


@dataclass(frozen=True)
class PodOnNode:
    """A pod bound to the draining Node, as the drain sees it."""

    key: str
    """namespace/name"""
    needs_eviction: bool
    """False for what a drain leaves: DaemonSet and mirror pods, finished pods."""
    deleting: bool
    """Its deletion has begun (an eviction was accepted, or someone deleted it)."""
    deleting_for_s: float = 0.0
    """How long this provisioner has seen it deleting, by its own clock (never the API server's
    deletionTimestamp: the two clocks may disagree by more than the grace)."""
    grace_s: float = 0.0
    """Its deletion grace period (metadata.deletionGracePeriodSeconds)."""


@dataclass(frozen=True)
class TerminationObserved:
    has_finalizer: bool
    node: str | None
    """The claim's Node, as the cache shows it."""
    node_unschedulable: bool
    recorded_node: str | None
    """status.nodeName: the Node the claim registered, which a provider may have deleted already."""
    instance: str | None
    """The provider's instance (None: there is none, or no more)."""
    instance_state: str | None
    repaired: bool
    """Given up as unhealthy (node repair): its kubelet cannot stop pods."""
    provider: str = "the provider"
    pods: Sequence[PodOnNode] | None = None
    """The pods on the Node, listed only where a drain is possible (`drain_possible`)."""
    stuck_pod_grace_s: float = 60.0
    """How long past its own grace a deleting pod is waited for (`--stuck-pod-grace`)."""


@dataclass(frozen=True)
class TerminationDecision:
    cordon: str | None = None
    evict: tuple[str, ...] = ()
    """Pods to evict through the eviction API (PodDisruptionBudgets answer)."""
    begin_delete: bool = False
    """Ask the provider to delete the instance (it was not deleting yet)."""
    condition: tuple[Status, str, str] | None = None
    """The Terminating condition: (status, reason, message)."""
    delete_node: str | None = None
    release_pods_of: str | None = None
    """Force-delete the pods still bound to this gone Node."""
    remove_finalizer: bool = False
    requeue: bool = False


def lost(o: TerminationObserved) -> bool:
    """An instance gone or failed, or a node given up as unhealthy, cannot run or stop its pods:
    draining it would wait for nothing, forever where the kubelet is dead."""
    return o.instance is None or o.instance_state == "failed" or o.repaired


def stuck(p: PodOnNode, stuck_pod_grace_s: float) -> bool:
    """Deleting for longer than its grace plus the stuck-pod grace: its node is not stopping it,
    and waiting longer would wait forever."""
    return p.deleting and p.deleting_for_s > p.grace_s + stuck_pod_grace_s


def drain_possible(o: TerminationObserved) -> bool:
    """Whether the pods on the Node are worth listing."""
    return o.has_finalizer and o.node is not None and not lost(o)


def decide_termination(o: TerminationObserved) -> TerminationDecision:
    if not o.has_finalizer:
        return TerminationDecision()
    cordon = None
    if drain_possible(o):
        assert o.node is not None
        cordon = None if o.node_unschedulable else o.node
        remaining = [p for p in o.pods or () if p.needs_eviction and not stuck(p, o.stuck_pod_grace_s)]
        if remaining:
            return TerminationDecision(
                cordon=cordon,
                evict=tuple(p.key for p in remaining if not p.deleting),
                condition=("Unknown", "Draining", f"evicting pods from node {o.node}"),
                requeue=True,
            )
    if o.instance is not None:
        return TerminationDecision(
            cordon=cordon,
            begin_delete=o.instance_state != "deleting",
            condition=("True", "InstanceTerminating", f"waiting for {o.provider} to delete {o.instance}"),
            requeue=True,
        )
    return TerminationDecision(
        delete_node=o.node,
        # By the claim's record too: a provider may delete the Node itself (as a cloud's node
        # controller does for a deleted VM), and the cache then no longer shows it.
        release_pods_of=o.node or o.recorded_node,
        remove_finalizer=True,
    )
