"""How long this controller has seen each pod of a workspace, on its own monotonic clock.

A pod's age decides when its events are worth reading (a pod still starting is not "stuck").
Its creationTimestamp is the API server's clock; compared with this process's clock, a skew of
an hour would make every new pod an hour old (or never old enough). The time a pod was first
observed is read from one clock only, like client-go's observed-since timestamps; a restart
starts the count again, which only delays an explanation by the grace it waits for."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping


class FirstSeen:
    """First-observed times of the pods of each workspace, by uid. Bounded by the live pods:
    each observation of a workspace keeps only the pods it names, and `forget` drops a workspace."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[str, dict[str, float]] = {}

    def ages(self, workspace: str, uids: Iterable[str]) -> Mapping[str, float]:
        """Seconds since each of `uids` (the workspace's pods now) was first observed here."""
        now = self._clock()
        before = self._seen.get(workspace, {})
        seen = {uid: before.get(uid, now) for uid in uids}
        if seen:
            self._seen[workspace] = seen
        else:
            self._seen.pop(workspace, None)
        return {uid: now - at for uid, at in seen.items()}

    def forget(self, workspace: str) -> None:
        self._seen.pop(workspace, None)

    def __len__(self) -> int:
        return sum(len(v) for v in self._seen.values())
