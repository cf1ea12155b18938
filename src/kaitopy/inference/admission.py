"""Admission control: at most `max_concurrency` requests generate at once and at most `max_queue` wait;
one more is refused at once (429) rather than left to time out in a queue nobody bounds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class QueueFull(Exception):
    """Every slot is busy and the wait queue is full."""


class Admission:
    def __init__(
        self,
        max_concurrency: int,
        max_queue: int,
        on_change: Callable[[int, int], None] | None = None,
    ) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self._slots = asyncio.Semaphore(max_concurrency)
        self._waiting = 0
        self._running = 0
        self._on_change = on_change

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return self._running

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self._waiting, self._running)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a generation slot for the body of the `async with`; raise QueueFull when none is free
        and the queue is full. A caller cancelled while waiting leaves the queue."""
        if (self._slots.locked() or self._waiting > 0) and self._waiting >= self.max_queue:
            raise QueueFull
        self._waiting += 1
        self._changed()
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
            self._changed()
        self._running += 1
        self._changed()
        try:
            yield
        finally:
            self._running -= 1
            self._slots.release()
            self._changed()
