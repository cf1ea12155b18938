"""A work queue with exactly client-go's contract, plus delayed and rate-limited adds.

The contract (the whole point):
  * an item is never processed by two workers at once (`processing` set);
  * an item has at most one pending copy (`dirty` set): adding it again while queued is a no-op;
  * adding it while it is processed marks it dirty, and `done()` puts it back in the queue;
  * a delayed add keeps the earliest ready time when the same item is added again;
  * shutdown stops accepting adds and hands nothing out any more (queued items are dropped, not
    started half-way through a shutdown); drain waits for the items already in process to be done.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from kaitopy.runtime.clock import Clock, RealClock, Timer
from kaitopy.runtime.controller.ratelimit import RateLimiter, default_controller_rate_limiter
from kaitopy.runtime.metrics import Metrics

T = TypeVar("T", bound=Hashable)


class ShutDown(Exception):
    """The queue was shut down and has nothing left to hand out."""


@dataclass(frozen=True)
class _Labels:
    name: str
    controller: str


class WorkQueue(Generic[T]):
    """client-go's Type + DelayingQueue + RateLimitingQueue in one asyncio class."""

    def __init__(
        self,
        name: str = "",
        *,
        clock: Clock | None = None,
        rate_limiter: RateLimiter | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = name
        self._clock = clock or RealClock()
        self._limiter = rate_limiter or default_controller_rate_limiter(self._clock)
        self._queue: deque[T] = deque()
        self._dirty: set[T] = set()
        self._processing: set[T] = set()
        self._waiting: dict[T, float] = {}  # item -> earliest ready time
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._drained: asyncio.Event | None = None
        self._shutting_down = False
        self._added_at: dict[T, float] = {}
        self._started_at: dict[T, float] = {}
        self._metrics = metrics
        if metrics is not None:
            labels = (name, name)
            self._m_depth = metrics.workqueue_depth.labels(*labels)
            self._m_adds = metrics.workqueue_adds_total.labels(*labels)
            self._m_queue_dur = metrics.workqueue_queue_duration_seconds.labels(*labels)
            self._m_work_dur = metrics.workqueue_work_duration_seconds.labels(*labels)
            self._m_retries = metrics.workqueue_retries_total.labels(*labels)
            metrics.workqueue_unfinished_work_seconds.labels(*labels).set_function(
                self.unfinished_work_seconds
            )
            metrics.workqueue_longest_running_processor_seconds.labels(*labels).set_function(
                self.longest_running_processor_seconds
            )

    # -- the basic queue --------------------------------------------------------------------------
    def add(self, item: T) -> None:
        """Queue the item unless it is already pending; if it is being processed, requeue on done()."""
        if self._shutting_down or item in self._dirty:
            return
        self._dirty.add(item)
        if self._metrics is not None:
            self._m_adds.inc()
        self._added_at.setdefault(item, self._clock.now())
        if item in self._processing:
            return
        self._push(item)

    def _push(self, item: T) -> None:
        self._queue.append(item)
        if self._metrics is not None:
            self._m_depth.set(len(self._queue))
        self._wake_one()

    def _wake_one(self) -> None:
        while self._getters:
            fut = self._getters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _wake_all(self) -> None:
        while self._getters:
            fut = self._getters.popleft()
            if not fut.done():
                fut.set_result(None)

    def __len__(self) -> int:
        """Items ready to be handed out (not the delayed ones, not the ones in process)."""
        self._move_ready()
        return len(self._queue)

    def get_nowait(self) -> T | None:
        """The next ready item, marked as processing; None if nothing is ready. Raises ShutDown."""
        if self._shutting_down:
            # Starting a reconcile now would only get it cancelled by the drain deadline mid-way.
            raise ShutDown(self.name)
        self._move_ready()
        if self._queue:
            item = self._queue.popleft()
            now = self._clock.now()
            if self._metrics is not None:
                self._m_depth.set(len(self._queue))
                added = self._added_at.get(item)
                if added is not None:
                    self._m_queue_dur.observe(now - added)
            self._added_at.pop(item, None)
            self._started_at[item] = now
            self._processing.add(item)
            self._dirty.discard(item)
            return item
        return None

    async def get(self) -> T:
        """Wait for the next item; the caller must call done(item) when finished. Raises ShutDown."""
        while True:
            item = self.get_nowait()
            if item is not None:
                return item
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._getters.append(fut)
            timer: Timer | None = None
            if self._heap:
                timer = self._clock.call_later(self._heap[0][0] - self._clock.now(), self._wake_all)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._wake_one()  # pass our wake-up on to another getter
                raise
            finally:
                if timer is not None:
                    timer.cancel()

    def done(self, item: T) -> None:
        """Processing of `item` finished; requeue it if it was added meanwhile."""
        self._processing.discard(item)
        started = self._started_at.pop(item, None)
        if self._metrics is not None and started is not None:
            self._m_work_dur.observe(self._clock.now() - started)
        if item in self._dirty:
            self._push(item)
        if self._drained is not None and not self._processing:
            self._drained.set()

    # -- delays -----------------------------------------------------------------------------------
    def add_after(self, item: T, delay: float) -> None:
        """Add the item once `delay` seconds passed; an earlier pending ready time wins."""
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(item)
            return
        ready = self._clock.now() + delay
        current = self._waiting.get(item)
        if current is not None and current <= ready:
            return
        self._waiting[item] = ready
        heapq.heappush(self._heap, (ready, next(self._seq), item))
        if len(self._heap) == 1 or self._heap[0][2] == item:
            self._wake_all()  # getters re-arm their timer on the new earliest time

    def _move_ready(self) -> None:
        if not self._heap:
            return
        now = self._clock.now()
        while self._heap and self._heap[0][0] <= now:
            ready, _, item = heapq.heappop(self._heap)
            if self._waiting.get(item) == ready:  # else a stale entry replaced by an earlier time
                del self._waiting[item]
                self.add(item)

    @property
    def waiting(self) -> int:
        """Items waiting for their delay to pass."""
        return len(self._waiting)

    # -- rate limiting ----------------------------------------------------------------------------
    def add_rate_limited(self, item: T, *, at_least: float = 0.0) -> None:
        """Add after the rate limiter's delay for this item (a retry), and not before `at_least` s
        (a server's Retry-After); the limiter still counts the failure."""
        if self._metrics is not None:
            self._m_retries.inc()
        self.add_after(item, max(self._limiter.when(item), at_least))

    def forget(self, item: T) -> None:
        """Stop tracking the item's failures (it succeeded)."""
        self._limiter.forget(item)

    def num_requeues(self, item: T) -> int:
        return self._limiter.num_requeues(item)

    # -- shutdown ---------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Refuse new adds, drop queued and delayed items, wake every getter (they get ShutDown)."""
        self._shutting_down = True
        self._waiting.clear()
        self._heap.clear()
        self._queue.clear()
        self._dirty.clear()  # an item re-added while in process must not come back on done()
        self._added_at.clear()
        if self._metrics is not None:
            self._m_depth.set(0)
        self._wake_all()

    async def shutdown_with_drain(self) -> None:
        """Shut down, then wait until every item in process is done()."""
        self.shutdown()
        if self._processing:
            self._drained = asyncio.Event()
            await self._drained.wait()

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    @property
    def processing(self) -> int:
        return len(self._processing)

    # -- metrics ----------------------------------------------------------------------------------
    def unfinished_work_seconds(self) -> float:
        now = self._clock.now()
        return sum(now - t for t in self._started_at.values())

    def longest_running_processor_seconds(self) -> float:
        if not self._started_at:
            return 0.0
        return self._clock.now() - min(self._started_at.values())
