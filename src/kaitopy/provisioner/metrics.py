"""The provisioner's own metrics: how long a NodeClaim takes from creation to Launched and to Ready.

Observed by the lifecycle controller in the reconcile that turns the condition True, after the
status was written: only the leader reconciles, so each claim is counted once per condition
(a claim whose transition a crash lost is not counted again)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kaitopy.provisioner.nodeclaim import INSTANCE_TYPE_LABEL, single_value_requirements
from kaitopy.runtime.cache.store import Store
from kaitopy.runtime.metrics import Metrics

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


NODECLAIM_NOT_READY_SECONDS: Final = "kaitopy_nodeclaim_not_ready_seconds"
LEAKED_INSTANCES: Final = "kaitopy_provisioner_leaked_instances"


class NodeClaimAgeCollector(Collector):
    """`kaitopy_nodeclaim_not_ready_seconds{nodeclaim,instance_type}`: for each NodeClaim not yet
    Ready (and not being deleted), seconds since its creation, read from the informer cache at
    scrape time. No series once a claim is Ready: the alert on a claim stuck launching needs only
    the ones still waiting, and the launch histogram covers the rest."""

    def __init__(self, claims: Store | None = None, clock: Callable[[], float] = time.time) -> None:
        self.claims = claims
        self.clock = clock

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(NODECLAIM_NOT_READY_SECONDS, _NOT_READY_HELP, labels=_AGE_LABELS)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(NODECLAIM_NOT_READY_SECONDS, _NOT_READY_HELP, labels=_AGE_LABELS)
        now = self.clock()
        for claim in self.claims.list() if self.claims is not None else []:
            md = claim.get("metadata") or {}
            conds = (claim.get("status") or {}).get("conditions") or ()
            if md.get("deletionTimestamp") or any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in conds
            ):
                continue
            created = _timestamp(md.get("creationTimestamp"))
            if created is None:
                continue
            labels = {**(md.get("labels") or {}), **single_value_requirements(claim)}
            instance_type = str(labels.get(INSTANCE_TYPE_LABEL) or "")
            family.add_metric([str(md.get("name")), instance_type], max(now - created, 0.0))
        yield family


_NOT_READY_HELP = "Seconds since creation of each NodeClaim that is not Ready yet (and not being deleted)"
_AGE_LABELS: Final = ["nodeclaim", "instance_type"]


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _register_age(registry: CollectorRegistry) -> NodeClaimAgeCollector:
    collector = NodeClaimAgeCollector()
    registry.register(collector)
    return collector


def register_nodeclaim_age(metrics: Metrics, claims: Store) -> NodeClaimAgeCollector:
    """The not-Ready ages in `metrics`' registry, reading `claims` (registered once per registry;
    wiring the same client into another manager points it at that manager's cache)."""
    collector = metrics.extension("kaitopy_nodeclaim_age", _register_age)
    collector.claims = claims
    return collector


class LeakMetrics:
    """`kaitopy_provisioner_leaked_instances{provider}`: instances the last garbage-collection pass
    found without a NodeClaim (past the grace period), deleted or not. One that stays above 0
    across passes is an instance the collector cannot delete: it costs money until someone looks."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.leaked = Gauge(
            LEAKED_INSTANCES,
            "Cloud instances labelled as ours whose NodeClaim is gone, found by the last garbage "
            "collection pass",
            ["provider"],
            registry=registry,
        )
