"""`kaitopy status --wait`'s progress line: conditions counted and marked in Kaito's order."""

from __future__ import annotations

from typing import Any

from kaitopy.usercli.status import progress_line


def _ws(*conds: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "w", "namespace": "n"},
        "status": {
            "conditions": [{"type": t, "status": s, "reason": r, "message": f"{t} msg"} for t, s, r in conds]
        },
    }


def test_progress_counts_and_marks_in_order() -> None:
    ws = _ws(
        ("InferenceReady", "False", "WorkloadNotReady"),
        ("NodeClaimReady", "True", "NodeClaimsReady"),
        ("WorkspaceSucceeded", "Unknown", "Pending"),
        ("ResourceReady", "True", "WorkspaceResourceReady"),
        ("WorkspaceDeleting", "False", "NotDeleting"),
    )
    line = progress_line(ws, 75.4)
    assert line.startswith(
        "[01:15] 2/4 +NodeClaimReady +ResourceReady -InferenceReady ?WorkspaceSucceeded | "
    )
    assert line.endswith("waiting on: InferenceReady is False (WorkloadNotReady): InferenceReady msg")


def test_progress_done_and_empty() -> None:
    done = _ws(("ResourceReady", "True", "x"), ("WorkspaceSucceeded", "True", "y"))
    assert progress_line(done, 3) == "[00:03] 2/2 +ResourceReady +WorkspaceSucceeded | ready"
    empty = {"metadata": {"name": "w", "namespace": "n"}}
    assert progress_line(empty, 0) == (
        "[00:00] 0/0 (no conditions yet) | waiting on: the controller has not reported on it yet"
    )
