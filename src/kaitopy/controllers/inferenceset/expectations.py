"""Expectations: the member creates and deletes a set has made that its cache has not shown yet.

The cache lags the API server. A reconcile that ran on a cache which does not yet show the member it
just created would create another; one that does not yet show a deletion would delete another. So
after acting, the reconciler records what it expects, and decides nothing for that set until the
cache shows all of it (or `timeout_s` passes, in case an event was lost).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

DEFAULT_TIMEOUT_S = 300.0  # as controller-runtime's ReplicaSet: long enough for any watch to catch up


@dataclass
class _Pending:
    adds: set[str] = field(default_factory=set)
    deletes: set[str] = field(default_factory=set)
    since: float = 0.0


class Expectations:
    """Per set key: names expected to appear, names expected to go (or be marked deleting)."""

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._pending: dict[str, _Pending] = {}

    def expect(self, key: str, *, adds: Iterable[str] = (), deletes: Iterable[str] = (), now: float) -> None:
        pending = self._pending.setdefault(key, _Pending(since=now))
        pending.adds.update(adds)
        pending.deletes.update(deletes)
        pending.since = now

    def observed_failure(self, key: str, name: str) -> None:
        """A create or delete that failed (or found its work done) will never show: stop waiting."""
        pending = self._pending.get(key)
        if pending is not None:
            pending.adds.discard(name)
            pending.deletes.discard(name)

    def satisfied(self, key: str, present: Collection[str], deleting: Collection[str], *, now: float) -> bool:
        """True when the cache shows every expected create (`present`) and delete (gone or `deleting`)."""
        pending = self._pending.get(key)
        if pending is None:
            return True
        pending.adds -= set(present)
        pending.deletes = {n for n in pending.deletes if n in present and n not in deleting}
        if (not pending.adds and not pending.deletes) or now - pending.since > self.timeout_s:
            del self._pending[key]
            return True
        return False

    def forget(self, key: str) -> None:
        self._pending.pop(key, None)
