"""Reads that see the controller's own last writes (the idea of client-go's MutationCache).

A reconcile that writes an object (a finalizer, a status) returns, and the next event for the
same key can start another reconcile before the watch has delivered that write to the cache. The
second reconcile then acts on an older copy: its conditional status patch fails with Conflict and
the work is redone with backoff, or, without a precondition, it would overwrite the newer status.
Under load the watch lags by seconds and this happens to most objects.

`RecentWrites` sits in front of a `Store`: `remember()` the object a write returned, and `get()`
answers with whichever of the cached and the written copy is newer, until the cache catches up
or the entry expires.
"""

from __future__ import annotations

from kaitopy.runtime.cache.store import Store
from kaitopy.runtime.clock import Clock, RealClock
from kaitopy.runtime.objects import Obj, key_of, meta


def _version(obj: Obj) -> int | None:
    # resourceVersions are opaque by contract, but every Kubernetes release backs them with
    # etcd's integer revision; client-go's MutationCache compares them the same way. Anything
    # else is treated as incomparable, and the cache wins.
    try:
        return int(str(meta(obj).get("resourceVersion")))
    except ValueError:
        return None


class RecentWrites:
    """The newer of a store's copy and the last copy this process wrote, per key."""

    def __init__(self, store: Store, *, ttl_s: float = 60.0, clock: Clock | None = None) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._clock = clock or RealClock()
        self._written: dict[str, tuple[Obj, float]] = {}
        self._sweep_at = 256

    def remember(self, obj: Obj) -> None:
        """Record an object as the API server returned it from a write."""
        if _version(obj) is None:
            return
        self._written[key_of(obj)] = (obj, self._clock.now() + self._ttl_s)
        if len(self._written) >= self._sweep_at:
            self._sweep()

    def _sweep(self) -> None:
        # Keys that are never read again (their objects left the queue) would otherwise stay.
        now = self._clock.now()
        for key in [k for k, (_, expires) in self._written.items() if now > expires]:
            del self._written[key]
        self._sweep_at = max(256, 2 * len(self._written))

    def get(self, key: str) -> Obj | None:
        cached = self._store.get(key)
        entry = self._written.get(key)
        if entry is None:
            return cached
        written, expires = entry
        # Gone from the cache means deleted (or never seen): a deletion is newer than any write.
        if cached is None or self._clock.now() > expires:
            del self._written[key]
            return cached
        cached_version, written_version = _version(cached), _version(written)
        if cached_version is None or written_version is None or cached_version >= written_version:
            del self._written[key]  # the watch caught up
            return cached
        return written

    def forget(self, key: str) -> None:
        self._written.pop(key, None)

    def __len__(self) -> int:
        return len(self._written)
