"""An event recorder writing events.k8s.io/v1 Events, with client-go's EventCorrelator rules.

Recording never raises: events are best-effort, a failure is logged and the reconcile goes on.

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

import logging
import time
import uuid
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

    def values(self) -> list[V]:
        return list(self._data.values())

    def __len__(self) -> int:
        return len(self._data)


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
        self._clock = clock or RealClock()
        self._series: _Lru[tuple[str, str, str, str, str], _Series] = _Lru(s.max_tracked)
        self._similar: _Lru[tuple[str, str, str, str], _Similar] = _Lru(s.max_tracked)
        self._buckets: _Lru[str, _Bucket] = _Lru(s.max_tracked)
        self.dropped = 0
        """Events the spam filter dropped."""

    @property
    def tracked(self) -> int:
        """Entries held in memory, all tables together (bounded by 3 x max_tracked)."""
        return len(self._series) + len(self._similar) + len(self._buckets)

    async def event(
        self, regarding: Obj, type_: EventKind, reason: str, note: str, *, action: str = "Reconcile"
    ) -> None:
        uid = str(meta(regarding).get("uid", ""))
        now = self._clock.now()
        if not self._allow(uid, now):
            self.dropped += 1
            log.debug("event dropped by the spam filter", extra={"object": _ref(regarding), "reason": reason})
            return
        note = self._aggregate(uid, type_, reason, action, note, now)
        key = (uid, type_, reason, action, note)
        try:
            seen = self._series.get(key)
            if seen is not None:
                seen.count += 1
                if now - seen.written_at >= self.settings.series_write_interval:
                    if await self._write_series(seen, now):
                        return
                    self._series.pop(key)  # expired (events live 1 h): start a new one
                else:
                    return
            created = await self.client.create(EVENT, self._body(regarding, type_, reason, action, note))
            ns = str(created["metadata"].get("namespace") or "")
            self._series.put(key, _Series(created["metadata"]["name"], ns, 1, 1, now))
        except RuntimeLibraryError as exc:
            log.warning(
                "could not record event",
                extra={"object": _ref(regarding), "reason": reason, "error": str(exc)},
            )

    async def flush(self) -> None:
        """Write the counts of repeated events not written yet (e.g. before the process exits)."""
        now = self._clock.now()
        for seen in self._series.values():
            if seen.count != seen.written_count:
                try:
                    await self._write_series(seen, now)
                except RuntimeLibraryError as exc:
                    log.warning(
                        "could not update event series", extra={"event": seen.name, "error": str(exc)}
                    )

    async def _write_series(self, seen: _Series, now: float) -> bool:
        """Patch the Event's series with the count so far; False if the Event is gone."""
        try:
            await self.client.patch(
                EVENT,
                seen.name,
                {"series": {"count": seen.count, "lastObservedTime": _micro(datetime.now(UTC))}},
                namespace=seen.namespace,
            )
        except NotFound:
            return False
        seen.written_count, seen.written_at = seen.count, now
        return True

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
