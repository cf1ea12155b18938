"""The loop-lag monitor sees a blocking call for as long as it held the loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from kaitopy.runtime import Metrics
from kaitopy.runtime.manager.looplag import LoopLagMonitor

pytestmark = pytest.mark.unit


async def test_a_blocked_loop_shows_as_lag() -> None:
    metrics = Metrics()
    monitor = LoopLagMonitor(metrics, interval_s=0.02)
    task = asyncio.create_task(monitor.run())
    await asyncio.sleep(0.1)
    time.sleep(0.3)  # noqa: ASYNC251 - the blocking call in a reconcile this monitor exists to expose
    await asyncio.sleep(0.1)
    task.cancel()
    assert monitor.max_lag_s >= 0.25
    exposition = metrics.exposition().decode()
    assert 'event_loop_lag_seconds_bucket{le="0.5"}' in exposition
    assert "event_loop_lag_seconds_count" in exposition
