"""Prometheus metrics under controller-runtime's and client-go's exact names, so dashboards carry over.

One `Metrics` owns one registry (no process-global state): a manager creates it and hands it to the
client, the queues and the controllers it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

T = TypeVar("T")

# Buckets as controller-runtime / client-go use them.
_RECONCILE_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.35,
    0.4,
    0.45,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    1.0,
    1.25,
    1.5,
    1.75,
    2.0,
    2.5,
    3.0,
    3.5,
    4.0,
    4.5,
    5,
    6,
    7,
    8,
    9,
    10,
    15,
    20,
    25,
    30,
    40,
    50,
    60,
)
_QUEUE_BUCKETS = tuple(10.0**e for e in range(-8, 4))

_LOOP_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every metric the runtime exports, registered in `self.registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry(auto_describe=True)
        self._extensions: dict[str, object] = {}
        self.reconcile_total = Counter(
            "controller_runtime_reconcile_total",
            "Total number of reconciliations per controller",
            ["controller", "result"],
            registry=r,
        )
        self.reconcile_errors_total = Counter(
            "controller_runtime_reconcile_errors_total",
            "Total number of reconciliation errors per controller",
            ["controller"],
            registry=r,
        )
        self.terminal_reconcile_errors_total = Counter(
            "controller_runtime_terminal_reconcile_errors_total",
            "Total number of terminal reconciliation errors per controller",
            ["controller"],
            registry=r,
        )
        self.reconcile_time_seconds = Histogram(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            ["controller"],
            buckets=_RECONCILE_BUCKETS,
            registry=r,
        )
        self.max_concurrent_reconciles = Gauge(
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller",
            ["controller"],
            registry=r,
        )
        self.active_workers = Gauge(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller",
            ["controller"],
            registry=r,
        )
        q = ["name", "controller"]
        self.workqueue_depth = Gauge("workqueue_depth", "Current depth of workqueue", q, registry=r)
        self.workqueue_adds_total = Counter(
            "workqueue_adds_total", "Total number of adds handled by workqueue", q, registry=r
        )
        self.workqueue_queue_duration_seconds = Histogram(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested",
            q,
            buckets=_QUEUE_BUCKETS,
            registry=r,
        )
        self.workqueue_work_duration_seconds = Histogram(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes",
            q,
            buckets=_QUEUE_BUCKETS,
            registry=r,
        )
        self.workqueue_retries_total = Counter(
            "workqueue_retries_total", "Total number of retries handled by workqueue", q, registry=r
        )
        self.workqueue_unfinished_work_seconds = Gauge(
            "workqueue_unfinished_work_seconds",
            "How many seconds of work has been done that is in progress and hasn't been observed by "
            "work_duration. Large values indicate stuck threads.",
            q,
            registry=r,
        )
        self.workqueue_longest_running_processor_seconds = Gauge(
            "workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for workqueue been running.",
            q,
            registry=r,
        )
        self.rest_client_requests_total = Counter(
            "rest_client_requests_total",
            "Number of HTTP requests, partitioned by status code, method, and host.",
            ["code", "method", "host"],
            registry=r,
        )
        # Not in client-go: by verb and resource (both bounded sets), so a benchmark or an
        # operator can tell which read or write a reconcile makes, not only how many.
        self.rest_client_requests_by_resource_total = Counter(
            "rest_client_requests_by_resource_total",
            "Number of HTTP requests, partitioned by Kubernetes verb and resource[/subresource].",
            ["verb", "resource"],
            registry=r,
        )
        self.leader_election_master_status = Gauge(
            "leader_election_master_status",
            "Gauge of if the reporting system is master of the relevant lease, "
            "0 indicates backup, 1 indicates master.",
            ["name"],
            registry=r,
        )

        self.event_loop_lag_seconds = Histogram(
            "event_loop_lag_seconds",
            "How late the process's asyncio event loop ran a periodic timer (time the loop was held)",
            buckets=_LOOP_LAG_BUCKETS,
            registry=r,
        )

    def extension(self, name: str, factory: Callable[[CollectorRegistry], T]) -> T:
        """An operator's own metrics in this registry, made by `factory` the first time `name` is
        asked for and returned as they are after that: a registry refuses a name twice, and the same
        client (so the same registry) may be wired into a second manager, e.g. after a restart."""
        found: Any = self._extensions.get(name)
        if found is None:
            found = self._extensions[name] = factory(self.registry)
        result: T = found
        return result

    def exposition(self) -> bytes:
        """The registry in Prometheus text format (what /metrics serves)."""
        return generate_latest(self.registry)

    def requests(self, *, method: str | None = None) -> float:
        """Sum of rest_client_requests_total, optionally for one HTTP method (handy in tests)."""
        total = 0.0
        for family in self.rest_client_requests_total.collect():
            for sample in family.samples:
                if sample.name.endswith("_total") and (
                    method is None or sample.labels.get("method") == method
                ):
                    total += sample.value
        return total
