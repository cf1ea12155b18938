"""FirstSeen: a pod's age on the controller's own monotonic clock, bounded by the live pods."""

from __future__ import annotations

import pytest

from kaitopy.runtime.seen import FirstSeen

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_ages_count_from_the_first_observation() -> None:
    clock = Clock()
    seen = FirstSeen(clock)
    assert seen.ages("ns/w", ["a"]) == {"a": 0.0}
    clock.t += 30
    assert seen.ages("ns/w", ["a", "b"]) == {"a": 30.0, "b": 0.0}
    clock.t += 5
    assert seen.ages("ns/w", ["a", "b"]) == {"a": 35.0, "b": 5.0}


def test_pods_gone_and_workspaces_forgotten_are_dropped() -> None:
    clock = Clock()
    seen = FirstSeen(clock)
    seen.ages("ns/w", ["a", "b"])
    seen.ages("ns/v", ["c"])
    clock.t += 10
    assert seen.ages("ns/w", ["b"]) == {"b": 10.0}
    assert len(seen) == 2
    seen.forget("ns/v")
    seen.ages("ns/w", [])
    assert len(seen) == 0
    clock.t += 10
    assert seen.ages("ns/w", ["a"]) == {"a": 0.0}  # a pod seen again counts from now


def test_an_age_is_never_negative_if_the_clock_steps_back() -> None:
    clock = Clock()
    seen = FirstSeen(clock)
    assert seen.ages("c", ["u1"]) == {"u1": 0.0}
    clock.t -= 50  # a wall clock given in place of the monotonic one, stepped back by NTP
    assert seen.ages("c", ["u1"]) == {"u1": 0.0}
