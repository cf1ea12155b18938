"""How a controller requeues a failed reconcile: the server's Retry-After, and the reconcile timeout."""

from __future__ import annotations

import asyncio

import pytest

from kaitopy.runtime import Controller, ControllerSettings, FakeClock, Request, Result, WorkQueue
from kaitopy.runtime.errors import TooManyRequests

pytestmark = pytest.mark.unit

REQ = Request("ns", "obj")


def make(reconcile: object, clock: FakeClock, **settings: float | None) -> Controller:
    queue: WorkQueue[Request] = WorkQueue("errors", clock=clock)
    return Controller(
        "errors",
        reconcile,  # type: ignore[arg-type]
        queue=queue,
        informers=[],
        settings=ControllerSettings(**settings),  # type: ignore[arg-type]
    )


async def test_a_429_is_requeued_no_sooner_than_its_retry_after() -> None:
    async def reconcile(req: Request) -> Result | None:
        raise TooManyRequests(429, "TooManyRequests", "slow down", retry_after=30.0)

    clock = FakeClock()
    ctrl = make(reconcile, clock)
    await ctrl._process(REQ)
    clock.advance(29.0)  # the rate limiter alone would have retried after 5 ms
    assert len(ctrl.queue) == 0
    clock.advance(2.0)
    assert len(ctrl.queue) == 1
    assert ctrl.queue.num_requeues(REQ) == 1  # the failure still counts for the backoff


async def test_a_reconcile_past_its_timeout_is_cancelled_and_retried_with_backoff() -> None:
    cancelled = asyncio.Event()

    async def reconcile(req: Request) -> Result | None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return None

    clock = FakeClock()
    ctrl = make(reconcile, clock, reconcile_timeout=0.05)
    await asyncio.wait_for(ctrl._process(REQ), 5)
    assert cancelled.is_set()
    assert ctrl.queue.num_requeues(REQ) == 1
    assert ctrl.queue.waiting == 1  # requeued through the rate limiter, not dropped
