"""How long this process has seen something (a pod, by uid), on its own monotonic clock.

An age that decides something (a pod stuck long enough to explain, or to stop waiting for) must
not subtract a time the API server wrote (creationTimestamp, deletionTimestamp) from this
process's clock: a skew of an hour between the two would make every new pod an hour old, or
never old enough. The time a thing was first observed is read from one clock only, like
client-go's observed-since timestamps; a restart starts the count again, which can only make a
controller wait longer, never act early."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping


class FirstSeen:
    """First-observed times by group (a workspace, a node) and uid. Bounded by what is live:
    each observation of a group keeps only the uids it names, and `forget` drops a group."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[str, dict[str, float]] = {}

    def ages(self, group: str, uids: Iterable[str]) -> Mapping[str, float]:
        """Seconds since each of `uids` (the group's members now) was first observed here."""
        now = self._clock()
        before = self._seen.get(group, {})
        seen = {uid: before.get(uid, now) for uid in uids}
        if seen:
            self._seen[group] = seen
        else:
            self._seen.pop(group, None)
        # Never negative, should the clock be a wall clock stepped back.
        return {uid: max(0.0, now - at) for uid, at in seen.items()}

    def forget(self, group: str) -> None:
        self._seen.pop(group, None)

    def __len__(self) -> int:
        return sum(len(v) for v in self._seen.values())
