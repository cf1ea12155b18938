"""The reconnect backoff: doubles to its cap, and `reset()` (a healthy watch) starts it over."""

from __future__ import annotations

import random

import pytest

from kaitopy.runtime import Backoff, FakeClock

pytestmark = pytest.mark.unit


def test_reset_after_a_healthy_watch_starts_from_initial() -> None:
    b = Backoff(initial=1.0, cap=8.0, jitter=0.0, clock=FakeClock(), rng=random.Random(0))
    assert [b.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    b.reset()
    assert b.next_delay() == 1.0
