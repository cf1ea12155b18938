"""How late the event loop runs: everything in a controller process shares one loop, so a long
JSON decode or a CPU-heavy reconcile delays every watch, probe and request behind it. A timer that
should fire every `interval` seconds measures by how much it fires late; the histogram shows
stalls that would otherwise only appear as slow probes or lagging watches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from prometheus_client import Histogram

from kaitopy.runtime.metrics import Metrics

LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def lag_histogram(metrics: Metrics) -> Histogram:
    return metrics.extension(
        "event_loop_lag",
        lambda registry: Histogram(
            "event_loop_lag_seconds",
            "How late the process's asyncio event loop ran a periodic timer (time the loop was held)",
            buckets=LAG_BUCKETS,
            registry=registry,
        ),
    )


class LoopLagMonitor:
    def __init__(
        self, metrics: Metrics, *, interval_s: float = 0.25, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._histogram = lag_histogram(metrics)
        self._interval_s = interval_s
        self._clock = clock
        self.max_lag_s = 0.0

    async def run(self) -> None:
        while True:
            started = self._clock()
            await asyncio.sleep(self._interval_s)
            lag = max(0.0, self._clock() - started - self._interval_s)
            self._histogram.observe(lag)
            self.max_lag_s = max(self.max_lag_s, lag)
