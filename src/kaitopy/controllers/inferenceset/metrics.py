"""The InferenceSets' load on the controller's /metrics, so KEDA (prometheus scaler) or an HPA on
external metrics can scale on the same signal as the built-in autoscaler:

- `kaitopy_inferenceset_queue_depth{namespace,inferenceset}`: requests waiting, summed over members.
- `kaitopy_inferenceset_running_requests{namespace,inferenceset}`: requests being generated.
- `kaitopy_inferenceset_members_answering{namespace,inferenceset}`: members whose /metrics answered.
- `kaitopy_inferenceset_tokens_per_minute{namespace,inferenceset}`: generated tokens per minute,
  summed over the members whose rate is known (their counter read at two scrapes).

Only sets with the autoscaler or `autoscaling.kaitopy.io/export-metrics: "true"` are scraped, every
15 s by the leader (other replicas report nothing)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kaitopy.controllers.inferenceset.autoscale import SetLoad

LABELS = ["namespace", "inferenceset"]
FAMILIES = (
    ("kaitopy_inferenceset_queue_depth", "Requests waiting for a generation slot, summed over members"),
    ("kaitopy_inferenceset_running_requests", "Requests holding a generation slot, summed over members"),
    ("kaitopy_inferenceset_members_answering", "Members whose /metrics answered at the last scrape"),
    ("kaitopy_inferenceset_tokens_per_minute", "Generated tokens per minute, summed over members"),
)


class InferenceSetLoadCollector(Collector):
    def __init__(self, load: Mapping[str, SetLoad]) -> None:
        self.load = load

    def describe(self) -> Iterator[Metric]:
        for name, help_ in FAMILIES:
            yield GaugeMetricFamily(name, help_, labels=LABELS)

    def collect(self) -> Iterator[Metric]:
        families = [GaugeMetricFamily(name, help_, labels=LABELS) for name, help_ in FAMILIES]
        for key, load in sorted(self.load.items()):
            labels = key.split("/", 1)
            families[0].add_metric(labels, load.queue_depth)
            families[1].add_metric(labels, load.running)
            families[2].add_metric(labels, float(load.answering))
            families[3].add_metric(labels, load.tokens_per_minute)
        yield from families
