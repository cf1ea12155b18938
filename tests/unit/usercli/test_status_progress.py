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


def test_the_startup_timeline_is_drawn_to_scale() -> None:
    from kaitopy.usercli.status import render_startup

    text = render_startup(
        {
            "revision": "abc",
            "startedAt": "2026-12-04T10:00:00Z",
            "readyAt": "2026-12-04T10:01:00Z",
            "seconds": 60,
            "phases": [
                {"name": "NodeProvisioning", "startedAt": "2026-12-04T10:00:00Z", "seconds": 30.0},
                {"name": "EngineStart", "startedAt": "2026-12-04T10:00:45Z", "seconds": 15.0},
            ],
        }
    )
    lines = text.splitlines()
    assert lines[0] == "  start-up (revision abc): ready in 60 s"
    assert lines[1].split()[:3] == ["NodeProvisioning", "+0", "s"] and lines[1].endswith("#" * 15)
    assert lines[2].split()[:5] == ["EngineStart", "+45", "s", "15.0", "s"]
    assert lines[2].endswith(" " * 22 + "#" * 8)


def test_finished_tuning_is_not_said_to_be_served() -> None:
    import io

    from kaitopy.usercli.status import render

    ws = _ws(("JobStarted", "True", "JobStarted"), ("WorkspaceSucceeded", "True", "WorkspaceSucceeded"))
    ws["metadata"] = {"name": "t", "namespace": "ns"}
    ws["tuning"] = {"preset": {"name": "phi-3-mini-4k-instruct"}}
    out = io.StringIO()
    render(ws, [], out)
    assert "done: the tuning job finished" in out.getvalue()
    assert "being served" not in out.getvalue()
