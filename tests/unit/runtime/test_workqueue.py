"""client-go work queue contract, driven by a fake clock (no sleeps)."""

from __future__ import annotations

import asyncio

import pytest

from kaitopy.runtime import FakeClock, Metrics, ShutDown, WorkQueue
from kaitopy.runtime.controller.ratelimit import ItemExponentialFailureRateLimiter


def make_queue(clock: FakeClock | None = None, metrics: Metrics | None = None) -> WorkQueue[str]:
    return WorkQueue("test", clock=clock or FakeClock(), metrics=metrics)


def test_add_deduplicates_pending_items() -> None:
    q = make_queue()
    q.add("a")
    q.add("b")
    q.add("a")
    assert len(q) == 2
    assert q.get_nowait() == "a"
    assert q.get_nowait() == "b"
    assert q.get_nowait() is None


def test_item_in_process_is_not_handed_out_again_until_done() -> None:
    q = make_queue()
    q.add("a")
    assert q.get_nowait() == "a"
    q.add("a")  # added while processing: marked dirty, not queued
    assert len(q) == 0
    assert q.get_nowait() is None
    q.add("a")  # still one pending copy
    q.done("a")
    assert len(q) == 1
    assert q.get_nowait() == "a"
    q.done("a")
    assert len(q) == 0


def test_done_without_readd_does_not_requeue() -> None:
    q = make_queue()
    q.add("a")
    q.get_nowait()
    q.done("a")
    assert len(q) == 0
    assert q.processing == 0


def test_add_after_waits_for_the_clock() -> None:
    clock = FakeClock()
    q = make_queue(clock)
    q.add_after("a", 5.0)
    assert len(q) == 0
    assert q.waiting == 1
    clock.advance(4.999)
    assert len(q) == 0
    clock.advance(0.001)
    assert q.get_nowait() == "a"
    assert q.waiting == 0


def test_add_after_earliest_ready_time_wins() -> None:
    clock = FakeClock()
    q = make_queue(clock)
    q.add_after("a", 10.0)
    q.add_after("a", 2.0)  # earlier: replaces
    q.add_after("a", 5.0)  # later: ignored
    clock.advance(2.0)
    assert q.get_nowait() == "a"
    q.done("a")
    clock.advance(10.0)  # the stale 5 s and 10 s entries must not add it again
    assert len(q) == 0


def test_add_after_non_positive_delay_adds_now() -> None:
    q = make_queue()
    q.add_after("a", 0)
    assert q.get_nowait() == "a"


def test_delayed_item_already_pending_is_not_duplicated() -> None:
    clock = FakeClock()
    q = make_queue(clock)
    q.add("a")
    q.add_after("a", 1.0)
    clock.advance(1.0)
    assert len(q) == 1


async def test_get_wakes_when_delay_passes() -> None:
    clock = FakeClock()
    q = make_queue(clock)
    q.add_after("a", 3.0)
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    assert not getter.done()
    assert clock.pending_timers == 1
    clock.advance(3.0)  # fires the getter's timer
    assert await asyncio.wait_for(getter, 1) == "a"


async def test_get_wakes_on_add() -> None:
    q = make_queue()
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.add("x")
    assert await asyncio.wait_for(getter, 1) == "x"


async def test_shutdown_hands_out_nothing_queued() -> None:
    q = make_queue()
    q.add("a")
    q.shutdown()
    q.add("b")  # refused
    with pytest.raises(ShutDown):
        await q.get()  # "a" is not started half-way through a shutdown


def test_item_readded_while_in_process_does_not_return_after_shutdown() -> None:
    q = make_queue()
    q.add("a")
    assert q.get_nowait() == "a"
    q.add("a")  # dirty: would be requeued on done()
    q.shutdown()
    q.done("a")
    assert len(q) == 0
    with pytest.raises(ShutDown):
        q.get_nowait()


async def test_shutdown_wakes_blocked_getters() -> None:
    q = make_queue()
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.shutdown()
    with pytest.raises(ShutDown):
        await asyncio.wait_for(getter, 1)


async def test_shutdown_with_drain_waits_for_items_in_process() -> None:
    q = make_queue()
    q.add("a")
    item = await q.get()
    drain = asyncio.create_task(q.shutdown_with_drain())
    await asyncio.sleep(0)
    assert not drain.done()
    q.done(item)
    await asyncio.wait_for(drain, 1)


def test_shutdown_drops_delayed_items() -> None:
    clock = FakeClock()
    q = make_queue(clock)
    q.add_after("a", 1.0)
    q.shutdown()
    clock.advance(2.0)
    with pytest.raises(ShutDown):
        q.get_nowait()


def test_rate_limited_adds_back_off_per_item_and_forget_resets() -> None:
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue("t", clock=clock, rate_limiter=ItemExponentialFailureRateLimiter(1.0, 8.0))
    delays = []
    for _ in range(5):
        start = clock.now()
        q.add_rate_limited("a")
        while q.get_nowait() is None:
            clock.advance(0.5)
        delays.append(clock.now() - start)
        q.done("a")
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert q.num_requeues("a") == 5
    q.forget("a")
    assert q.num_requeues("a") == 0


def test_metrics_follow_the_queue() -> None:
    clock = FakeClock()
    metrics = Metrics()
    q = make_queue(clock, metrics)
    q.add("a")
    q.add("b")
    q.add("a")
    reg = metrics.registry
    labels = {"name": "test", "controller": "test"}
    assert reg.get_sample_value("workqueue_adds_total", labels) == 2
    assert reg.get_sample_value("workqueue_depth", labels) == 2
    item = q.get_nowait()
    assert item is not None
    clock.advance(3.0)
    assert reg.get_sample_value("workqueue_longest_running_processor_seconds", labels) == 3.0
    assert reg.get_sample_value("workqueue_unfinished_work_seconds", labels) == 3.0
    q.done(item)
    assert reg.get_sample_value("workqueue_work_duration_seconds_sum", labels) == 3.0
    assert reg.get_sample_value("workqueue_queue_duration_seconds_count", labels) == 1
    q.add_rate_limited("c")
    assert reg.get_sample_value("workqueue_retries_total", labels) == 1
