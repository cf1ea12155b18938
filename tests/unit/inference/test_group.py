"""The multi-node group watch: when a peer's restart or silence restarts this rank (group.judge)."""

from __future__ import annotations

import pytest

from kaitopy.inference.group import Peer, judge

A, B = "http://ws-1.h:5000", "http://ws-2.h:5000"
GRACE = 30.0


@pytest.mark.parametrize(
    ("peers", "answers", "now", "reason"),
    [
        # First contact: remembered, no restart.
        ({}, {A: "i1", B: "j1"}, 10.0, None),
        # Same instances again: fine.
        ({A: Peer("i1", 10.0), B: Peer("j1", 10.0)}, {A: "i1", B: "j1"}, 15.0, None),
        # A new instance behind the same address: that peer restarted.
        ({A: Peer("i1", 10.0)}, {A: "i2"}, 15.0, f"{A} restarted (instance i1 is now i2)"),
        # Silent within the grace: wait.
        ({A: Peer("i1", 10.0)}, {A: None}, 10.0 + GRACE, None),
        # Silent past the grace: its pod is gone.
        ({A: Peer("i1", 10.0)}, {A: None}, 10.0 + GRACE + 1, f"{A} has not answered for 31 s (grace 30 s)"),
        # Never seen: not judged, however long (pods start at different times).
        ({}, {A: None}, 10_000.0, None),
        ({A: Peer()}, {A: None}, 10_000.0, None),
        # One peer fine, the other restarted: the group restarts.
        (
            {A: Peer("i1", 10.0), B: Peer("j1", 10.0)},
            {A: "i1", B: "j2"},
            15.0,
            f"{B} restarted (instance j1 is now j2)",
        ),
    ],
)
def test_judge(
    peers: dict[str, Peer], answers: dict[str, str | None], now: float, reason: str | None
) -> None:
    _, got = judge(peers, answers, now, GRACE)
    assert got == reason


def test_judge_keeps_first_instance_and_last_answer() -> None:
    state, _ = judge({}, {A: "i1"}, 10.0, GRACE)
    assert state[A] == Peer("i1", 10.0)
    state, _ = judge(state, {A: None}, 20.0, GRACE)
    assert state[A] == Peer("i1", 10.0)  # silence does not move the last answer
    state, _ = judge(state, {A: "i1"}, 25.0, GRACE)
    assert state[A] == Peer("i1", 25.0)
