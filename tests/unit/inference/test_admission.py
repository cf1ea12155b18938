from __future__ import annotations

import asyncio

import pytest

from kaitopy.inference.admission import Admission, QueueFull


async def test_slots_then_queue_then_refusal() -> None:
    changes: list[tuple[int, int]] = []
    admission = Admission(max_concurrency=1, max_queue=1, on_change=lambda w, r: changes.append((w, r)))
    release = asyncio.Event()

    async def hold() -> None:
        async with admission.slot():
            await release.wait()

    first = asyncio.create_task(hold())
    await asyncio.sleep(0)
    assert admission.running == 1
    second = asyncio.create_task(hold())
    await asyncio.sleep(0)
    assert admission.waiting == 1
    with pytest.raises(QueueFull):
        async with admission.slot():
            pass
    release.set()
    await asyncio.gather(first, second)
    assert (admission.running, admission.waiting) == (0, 0)
    assert (1, 0) in changes and changes[-1] == (0, 0)


async def test_no_queue_refuses_the_second() -> None:
    admission = Admission(max_concurrency=2, max_queue=0)
    async with admission.slot(), admission.slot():
        with pytest.raises(QueueFull):
            async with admission.slot():
                pass
    async with admission.slot():
        assert admission.running == 1


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    admission = Admission(max_concurrency=1, max_queue=5)
    async with admission.slot():
        waiter = asyncio.create_task(admission.slot().__aenter__())
        await asyncio.sleep(0)
        assert admission.waiting == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert admission.waiting == 0
    async with admission.slot():
        assert admission.running == 1
