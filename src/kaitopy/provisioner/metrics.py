"""The provisioner's own metric: how long a NodeClaim takes from creation to Launched and to Ready.

Observed by the lifecycle controller in the reconcile that turns the condition True, after the
status was written: only the leader reconciles, so each claim is counted once per condition
(a claim whose transition a crash lost is not counted again)."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

NODECLAIM_LAUNCH_SECONDS: Final = "kaitopy_nodeclaim_launch_seconds"
NODECLAIM_LOST: Final = "kaitopy_nodeclaim_lost"  # a counter: _total on the wire
# GPU nodes take minutes (AKS: 5-15); kwok ones well under a second.
LAUNCH_BUCKETS: Final = (0.5, 1, 5, 15, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600)


class NodeClaimMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.launch_seconds = Histogram(
            NODECLAIM_LAUNCH_SECONDS,
            "Seconds from a NodeClaim's creation until its condition (Launched, Ready) turned True",
            ["condition", "instance_type"],
            buckets=LAUNCH_BUCKETS,
            registry=registry,
        )
        self.lost = Counter(
            NODECLAIM_LOST,
            "NodeClaims deleted because their instance was gone or failed (a lost node, replaced)",
            ["provider"],
            registry=registry,
        )

    def observe_lost(self, provider: str) -> None:
        self.lost.labels(provider=provider).inc()

    def observe_launch(self, condition: str, instance_type: str, seconds: float) -> None:
        self.launch_seconds.labels(condition=condition, instance_type=instance_type).observe(
            max(seconds, 0.0)
        )
