"""How late the event loop runs: everything in a controller process shares one loop, so a long
JSON decode or a CPU-heavy reconcile delays every watch, probe and request behind it. A timer that
should fire every `interval` seconds measures by how much it fires late; the histogram shows
stalls that would otherwise only appear as slow probes or lagging watches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from kaitopy.runtime.metrics import Metrics


class LoopLagMonitor:
    def __init__(
        self, metrics: Metrics, *, interval_s: float = 0.25, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._histogram = metrics.event_loop_lag_seconds
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
