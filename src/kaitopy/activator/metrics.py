"""The activator's metrics, on its probe port's /metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LABELS = ("namespace", "inferenceset")
# From a request that only waits for a member's readiness to one that waits for a GPU node, its image
# and the model's weights (minutes).
HOLD_BUCKETS = (0.05, 0.25, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)


@dataclass
class ActivatorMetrics:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        r = self.registry
        self.hold_seconds = Histogram(
            "kaitopy_activator_hold_seconds",
            "How long a request was held for a ready member; outcome: forwarded, wait_exceeded, gone",
            [*LABELS, "outcome"],
            buckets=HOLD_BUCKETS,
            registry=r,
        )
        self.held = Gauge(
            "kaitopy_activator_held_requests",
            "Requests held now, waiting for a ready member",
            LABELS,
            registry=r,
        )
        self.rejected = Counter(
            "kaitopy_activator_rejected_requests",
            "Requests answered 503 by the activator; reason: queue_full, wait_exceeded, asleep",
            [*LABELS, "reason"],
            registry=r,
        )
        self.wakes = Counter(
            "kaitopy_activator_wakes", "Times the activator scaled a set from 0 to 1", LABELS, registry=r
        )
        self.forwarded = Counter(
            "kaitopy_activator_forwarded_requests",
            "Requests forwarded to a member, by the member's status code (0: no answer)",
            [*LABELS, "code"],
            registry=r,
        )
        self.connect_retries = Counter(
            "kaitopy_activator_connect_retries",
            "Connections to a ready member tried again after it refused or did not accept one",
            LABELS,
            registry=r,
        )
