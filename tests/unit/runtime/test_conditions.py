"""Status conditions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kaitopy.runtime import find_condition, freeze, is_true, remove_condition, set_condition

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_new_condition_gets_transition_time_and_generation() -> None:
    conds = set_condition(
        None, "Ready", "False", reason="Pending", message="waiting", observed_generation=3, now=T0
    )
    assert conds == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "Pending",
            "message": "waiting",
            "lastTransitionTime": "2026-01-02T03:04:05Z",
            "observedGeneration": 3,
        }
    ]


def test_transition_time_changes_only_when_status_flips() -> None:
    c0 = set_condition(None, "Ready", "False", reason="Pending", now=T0)
    same = set_condition(c0, "Ready", "False", reason="StillPending", message="x", now=T1)
    assert find_condition(same, "Ready")["lastTransitionTime"] == "2026-01-02T03:04:05Z"  # type: ignore[index]
    assert find_condition(same, "Ready")["reason"] == "StillPending"  # type: ignore[index]
    flipped = set_condition(same, "Ready", "True", reason="Done", now=T1)
    assert find_condition(flipped, "Ready")["lastTransitionTime"] == "2026-01-02T03:09:05Z"  # type: ignore[index]
    assert is_true(flipped, "Ready")


def test_unchanged_condition_yields_equal_data() -> None:
    c0 = set_condition(None, "Ready", "True", reason="Done", observed_generation=1, now=T0)
    assert set_condition(c0, "Ready", "True", reason="Done", observed_generation=1, now=T1) == c0


def test_order_kept_and_frozen_input_accepted() -> None:
    c = set_condition(None, "A", "True", reason="r", now=T0)
    c = set_condition(c, "B", "False", reason="r", now=T0)
    c2 = set_condition(freeze(c), "A", "False", reason="r", now=T1)
    assert [x["type"] for x in c2] == ["A", "B"]
    assert not is_true(c2, "A")
    assert not is_true(c2, "Missing")
    assert [x["type"] for x in remove_condition(c2, "A")] == ["B"]
