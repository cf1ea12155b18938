"""Jittered exponential backoff for reconnecting watches (client-go's reflector defaults)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kaitopy.runtime.clock import Clock, RealClock


@dataclass
class Backoff:
    """Delays double from `initial` to `cap`, stretched by up to `jitter` x; a quiet spell resets."""

    initial: float = 0.8
    """First delay: short, since most disconnects are one-off."""
    cap: float = 30.0
    """Longest delay: a recovering API server is retried at least twice a minute."""
    factor: float = 2.0
    jitter: float = 1.0
    """Random stretch (0..jitter x delay) so many clients do not reconnect in lockstep."""
    reset_after: float = 120.0
    """After this long without a failure the next failure starts again from `initial`."""
    clock: Clock = field(default_factory=RealClock)
    rng: random.Random = field(default_factory=random.Random)
    _current: float = 0.0
    _last_failure: float | None = None

    def reset(self) -> None:
        """Forget past failures (a healthy stretch was just seen): the next delay is `initial` again."""
        self._last_failure = None

    def next_delay(self) -> float:
        """Record a failure and return how long to wait before the next attempt."""
        now = self.clock.now()
        if self._last_failure is None or now - self._last_failure > self.reset_after:
            self._current = self.initial
        else:
            self._current = min(self._current * self.factor, self.cap)
        self._last_failure = now
        return min(self._current * (1.0 + self.rng.random() * self.jitter), self.cap)
