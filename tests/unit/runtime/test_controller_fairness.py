"""Workers yield between reconciles: a batch of reconciles that never await (nothing to write,
as in a resync of a thousand ready objects) must not hold the event loop for the whole batch."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from kaitopy.runtime import Controller, ControllerSettings, Request, Result, WorkQueue

pytestmark = pytest.mark.unit


async def test_other_tasks_run_during_a_batch_of_reconciles_that_never_await() -> None:
    ticks = 0
    seen: list[int] = []
    done = asyncio.Event()

    async def ticker() -> None:  # stands for the probes, the watches and the other workers
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def reconcile(req: Request) -> Result | None:
        seen.append(ticks)  # pure CPU work: no await anywhere
        if len(seen) == 300:
            done.set()
        return None

    queue: WorkQueue[Request] = WorkQueue("fairness")
    for i in range(300):
        queue.add(Request("ns", f"obj-{i}"))
    controller = Controller(
        "fairness",
        reconcile,
        queue=queue,
        informers=[],
        settings=ControllerSettings(max_concurrent_reconciles=2),
    )
    tick_task = asyncio.create_task(ticker())
    run = asyncio.create_task(controller.run())
    await asyncio.wait_for(done.wait(), 10)
    run.cancel()
    tick_task.cancel()
    for task in (run, tick_task):
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # The ticker ran between reconciles, not only before and after the batch.
    assert len(set(seen)) > 100, f"the loop was held: ticks seen by reconciles {sorted(set(seen))[:10]}"
