"""An event recorder writing events.k8s.io/v1 Events, with client-go's EventCorrelator rules.

Recording never raises and never waits for the API server: `event()` decides in memory what to
write and queues it; a writer task sends the writes (client-go's broadcaster does the same with a
channel and a goroutine). Under a burst of reconciles, event writes no longer stretch each
reconcile by a round trip; they trail it instead. The writes of one object stay in order: with
more than one of `writer_lanes`, each object's writes go to the lane its uid chooses, and each
lane has one writer. A full queue drops the
event (counted in `dropped`), as client-go's does; `drain()` waits until what is queued is written,
`flush()` also writes the repeat counts not written yet, and `close()` flushes and stops the
writers (a manager's shutdown hook).

What keeps events cheap (each rule as client-go's correlator has it, sizes as named settings):
  * correlation: a repeat of the same event (object, type, reason, action, note) is counted in
    memory and folded into the first Event's `series`; the count is written at most once per
    `series_write_interval` (and by `flush()`), not once per repeat;
  * aggregation: more than `aggregate_max_similar` events that differ only in their note within
    `aggregate_window` become one "(combined from similar events)" Event with a series;
  * spam filter: each object gets a token bucket (`spam_burst` events, refilled one per
    `spam_refill_interval`); events beyond it are dropped;
  * bounded memory: every table above is an LRU of at most `max_tracked` entries.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, Literal, TypeVar

from kaitopy.runtime.client import Client
from kaitopy.runtime.clock import Clock, RealClock
from kaitopy.runtime.errors import NotFound, RuntimeLibraryError
from kaitopy.runtime.kinds import EVENT
from kaitopy.runtime.objects import Obj, meta, name_of, namespace_of

log = logging.getLogger(__name__)

EventKind = Literal["Normal", "Warning"]
K = TypeVar("K")
V = TypeVar("V")


def _micro(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class EventRecorderSettings:
    """How much an event recorder may write and remember (client-go's correlator defaults)."""

    max_tracked: int = 4096
    """Entries kept per table (series, similar-event counters, spam buckets); least recent go first."""
    series_write_interval: float = 60.0
    """A repeated event's count is written at most this often; `flush()` writes what is pending."""
    aggregate_max_similar: int = 10
    """Events differing only in their note: after this many in the window they are combined."""
    aggregate_window: float = 600.0
    """Window (s) in which similar events are counted for aggregation."""
    spam_burst: int = 25
    """Events one object may produce at once before the spam filter drops them."""
    spam_refill_interval: float = 300.0
    """One more event is allowed per object every this many seconds once the burst is spent."""
    queue_size: int = 4096
    """Writes waiting for the API server, all lanes together; beyond it events are dropped."""
    writer_lanes: int = 1
    """Concurrent writers; one object's writes always share a lane, so they keep their order. One,
    as client-go's single sink goroutine: measured, four writers competed with the reconciles'
    own writes at the API server and made the 1,000-workspace create/delete waves 12% slower."""


class _Lru(Generic[K, V]):
    """A dict that forgets its least recently used entries beyond `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.limit:
            self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def items(self) -> list[tuple[K, V]]:
        return list(self._data.items())

    def __len__(self) -> int:
        return len(self._data)


_SeriesKey = tuple[str, str, str, str, str]
"""An event's identity for correlation: (object uid, type, reason, action, note)."""


@dataclass
class _Series:
    name: str
    namespace: str
    count: int
    written_count: int
    written_at: float


@dataclass
class _Similar:
    first_at: float
    notes: set[str] = field(default_factory=set)
    combined: bool = False


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass(frozen=True)
class _Create:
    body: Obj
    key: _SeriesKey
    series: _Series


@dataclass(frozen=True)
class _CountUpdate:
    key: _SeriesKey
    series: _Series
    count: int


_Write = _Create | _CountUpdate


class EventRecorder:
    """`await recorder.event(obj, "Normal", "Created", "created deployment x", action="Create")`."""

    def __init__(
        self,
        client: Client,
        controller: str,
        instance: str = "",
        *,
        settings: EventRecorderSettings | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.client = client
        self.controller = controller
        self.instance = instance or f"{controller}-{uuid.uuid4().hex[:6]}"
        self.settings = s = settings or EventRecorderSettings()
        if s.writer_lanes < 1 or s.queue_size < s.writer_lanes:
            raise ValueError("EventRecorderSettings: writer_lanes >= 1 and queue_size >= writer_lanes")
        self._clock = clock or RealClock()
        self._series: _Lru[_SeriesKey, _Series] = _Lru(s.max_tracked)
        self._similar: _Lru[tuple[str, str, str, str], _Similar] = _Lru(s.max_tracked)
        self._buckets: _Lru[str, _Bucket] = _Lru(s.max_tracked)
        # Made on first use: the queues and writers belong to the running event loop.
        self._lanes: list[asyncio.Queue[_Write]] = []
        self._writers: list[asyncio.Task[None]] = []
        self.dropped = 0
        """Events dropped: by the spam filter, or because the write queue was full."""

    @property
    def tracked(self) -> int:
        """Entries held in memory, all tables together (bounded by 3 x max_tracked)."""
        return len(self._series) + len(self._similar) + len(self._buckets)

    @property
    def pending(self) -> int:
        """Writes queued and not yet sent."""
        return sum(lane.qsize() for lane in self._lanes)

    async def event(
        self, regarding: Obj, type_: EventKind, reason: str, note: str, *, action: str = "Reconcile"
    ) -> None:
        """Record an event: decided here, written by a writer task soon after."""
        uid = str(meta(regarding).get("uid", ""))
        now = self._clock.now()
        if not self._allow(uid, now):
            self.dropped += 1
            log.debug("event dropped by the spam filter", extra={"object": _ref(regarding), "reason": reason})
            return
        note = self._aggregate(uid, type_, reason, action, note, now)
        key = (uid, type_, reason, action, note)
        seen = self._series.get(key)
        if seen is not None:
            seen.count += 1
            if now - seen.written_at >= self.settings.series_write_interval:
                self._queue_count(key, seen, now)
            return
        body = self._body(regarding, type_, reason, action, note)
        series = _Series(body["metadata"]["name"], body["metadata"]["namespace"], 1, 1, now)
        self._series.put(key, series)
        self._enqueue(_Create(body, key, series))

    async def drain(self) -> None:
        """Until every write queued so far was sent (or failed and was logged)."""
        for lane in self._lanes:
            await lane.join()

    async def flush(self) -> None:
        """Write the counts of repeated events not written yet, and wait until all is written."""
        now = self._clock.now()
        for key, seen in self._series.items():
            if seen.count != seen.written_count:
                self._queue_count(key, seen, now)
        await self.drain()

    async def close(self) -> None:
        """Flush, then stop the writers (a manager's shutdown hook)."""
        await self.flush()
        for task in self._writers:
            task.cancel()
        await asyncio.gather(*self._writers, return_exceptions=True)
        self._writers, self._lanes = [], []

    def _queue_count(self, key: _SeriesKey, seen: _Series, now: float) -> None:
        seen.written_count, seen.written_at = seen.count, now
        self._enqueue(_CountUpdate(key, seen, seen.count))

    def _enqueue(self, write: _Write) -> None:
        if not self._lanes:
            lanes = self.settings.writer_lanes
            size = self.settings.queue_size // lanes
            self._lanes = [asyncio.Queue(size) for _ in range(lanes)]
            self._writers = [
                asyncio.create_task(self._write_lane(q), name=f"event-writer-{i}")
                for i, q in enumerate(self._lanes)
            ]
        # The object's uid (key[0]) by a stable hash (not hash(), salted per process): one object,
        # one lane.
        lane = self._lanes[zlib.crc32(write.key[0].encode()) % len(self._lanes)]
        try:
            lane.put_nowait(write)
        except asyncio.QueueFull:
            self.dropped += 1
            if isinstance(write, _Create):
                self._series.pop(write.key)  # never written: a repeat must create it
            log.warning("event dropped: the write queue is full", extra={"event": write.series.name})

    async def _write_lane(self, lane: asyncio.Queue[_Write]) -> None:
        while True:
            write = await lane.get()
            try:
                await self._send(write)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a writer must outlive any one failed write
                log.warning("could not record event", extra={"event": write.series.name, "error": str(exc)})
            finally:
                lane.task_done()

    async def _send(self, write: _Write) -> None:
        if isinstance(write, _Create):
            try:
                await self.client.create(EVENT, write.body)
            except RuntimeLibraryError:
                if self._series.get(write.key) is write.series:
                    self._series.pop(write.key)  # not written: the next repeat creates it again
                raise
            return
        try:
            await self.client.patch(
                EVENT,
                write.series.name,
                {"series": {"count": write.count, "lastObservedTime": _micro(datetime.now(UTC))}},
                namespace=write.series.namespace,
            )
        except NotFound:
            # The Event expired (events live 1 h) or was deleted: the next repeat starts a new one.
            if self._series.get(write.key) is write.series:
                self._series.pop(write.key)

    def _allow(self, uid: str, now: float) -> bool:
        """The spam filter: a token bucket per object."""
        s = self.settings
        bucket = self._buckets.get(uid)
        if bucket is None:
            bucket = _Bucket(float(s.spam_burst), now)
            self._buckets.put(uid, bucket)
        refill = (now - bucket.at) / s.spam_refill_interval if s.spam_refill_interval > 0 else s.spam_burst
        bucket.tokens, bucket.at = min(float(s.spam_burst), bucket.tokens + refill), now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _aggregate(self, uid: str, type_: str, reason: str, action: str, note: str, now: float) -> str:
        """The note to record: `note`, or the combined one once similar events are too many."""
        s = self.settings
        key = (uid, type_, reason, action)
        similar = self._similar.get(key)
        if similar is None or now - similar.first_at > s.aggregate_window:
            similar = _Similar(now)
            self._similar.put(key, similar)
        if not similar.combined:
            similar.notes.add(note)
            if len(similar.notes) > s.aggregate_max_similar:
                similar.combined, similar.notes = True, set()  # the notes are no longer needed
        if similar.combined:
            # One constant note, so every further similar event folds into one Event's series.
            return f"(combined from similar events): {reason}"
        return note

    def _body(self, regarding: Obj, type_: str, reason: str, action: str, note: str) -> Obj:
        m = meta(regarding)
        ns = namespace_of(regarding) or "default"
        return {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            # A name as client-go makes one (the API server refuses a generateName ending in '.').
            "metadata": {"name": f"{name_of(regarding)}.{time.time_ns():x}", "namespace": ns},
            "eventTime": _micro(datetime.now(UTC)),
            "reportingController": self.controller,
            "reportingInstance": self.instance,
            "action": action,
            "reason": reason,
            "note": note[:1024],
            "type": type_,
            "regarding": {
                "apiVersion": regarding.get("apiVersion"),
                "kind": regarding.get("kind"),
                "name": name_of(regarding),
                "namespace": namespace_of(regarding) or None,
                "uid": m.get("uid"),
                "resourceVersion": m.get("resourceVersion"),
            },
        }


def _ref(obj: Obj) -> str:
    return f"{namespace_of(obj)}/{name_of(obj)}"
