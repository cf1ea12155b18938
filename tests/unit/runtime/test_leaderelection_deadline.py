"""The leader steps down by renew_deadline after the start of its last successful renewal, even
when an attempt is slow or hangs (the lease store is scripted: only the timing is under test)."""

from __future__ import annotations

import asyncio
import time

import pytest

from kaitopy.runtime import LeaderElectionSettings, LeadershipLost, Metrics
from kaitopy.runtime.manager.leaderelection import LeaderElector

pytestmark = pytest.mark.unit

DEADLINE = 1.0


class ScriptedElector(LeaderElector):
    """Renewal 1 succeeds after 0.5 s (the write landed at its start, the reply was slow); later
    renewals hang, as against an API server that stopped answering."""

    def __init__(self) -> None:
        settings = LeaderElectionSettings("l", "ns", "me", renew_deadline=DEADLINE, retry_period=0.2)
        super().__init__(None, settings, metrics=Metrics())  # type: ignore[arg-type]
        self.attempt_starts: list[float] = []
        self.successes: list[float] = []

    async def _try_acquire_or_renew(self) -> bool:
        start = time.monotonic()
        self.attempt_starts.append(start)
        if len(self.attempt_starts) == 1:
            await asyncio.sleep(0.5)
            self.successes.append(start)
            return True
        await asyncio.sleep(3600)
        return False


async def test_leader_steps_down_by_the_deadline_counted_from_its_last_renewal_attempt() -> None:
    elector = ScriptedElector()
    elector.is_leader = True
    with pytest.raises(LeadershipLost):
        await asyncio.wait_for(elector.hold(), 10)
    lost_at = time.monotonic()
    assert elector.successes, "the first renewal succeeded"
    # A follower may take over lease_duration after the write it saw; the leader must have stopped
    # by renew_deadline after that write. Before the fix: ~1.7 s (0.5 + 0.2 + a full 1.0 attempt).
    assert lost_at - elector.successes[-1] <= DEADLINE + 0.15, lost_at - elector.successes[-1]
    assert not elector.is_leader
