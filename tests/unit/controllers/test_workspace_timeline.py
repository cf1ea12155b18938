"""The start-up timeline from the objects and kubelet events a real start leaves behind."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kaitopy.controllers.workspace import timeline as tl

pytestmark = pytest.mark.unit


def at(hms: str) -> str:
    return f"2026-12-04T{hms}Z"


def t(hms: str) -> datetime:
    return datetime.fromisoformat(f"2026-12-04T{hms}+00:00").astimezone(UTC)


def claim(created: str, ready: str | None) -> dict[str, Any]:
    conds = [{"type": "Ready", "status": "True", "lastTransitionTime": at(ready)}] if ready else []
    return {"metadata": {"name": "c", "creationTimestamp": at(created)}, "status": {"conditions": conds}}


def term(a: str, b: str) -> dict[str, Any]:
    return {"terminated": {"startedAt": at(a), "finishedAt": at(b), "exitCode": 0}}


def ready_pod() -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "creationTimestamp": at("10:00:40")},
        "status": {
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": at("10:00:41")},
                {"type": "Ready", "status": "True", "lastTransitionTime": at("10:01:30")},
            ],
            "initContainerStatuses": [
                {"name": "weights", "state": term("10:00:50", "10:01:05")},
                {"name": "tools", "state": term("10:01:06", "10:01:06")},
                {"name": "adapter-a", "state": term("10:01:07", "10:01:08")},
                {"name": "adapter-b", "state": term("10:01:08", "10:01:10")},
            ],
            "containerStatuses": [{"name": "model", "state": {"running": {"startedAt": at("10:01:11")}}}],
        },
    }


def pulled(image: str, took: str, hms: str) -> dict[str, Any]:
    return {
        "reason": "Pulled",
        "type": "Normal",
        "message": f'Successfully pulled image "{image}" in {took} (9s including waiting). Image size: 1',
        "lastTimestamp": at(hms),
    }


EVENTS = [
    pulled("r/model-server@sha256:1", "8.5s", "10:00:50"),
    {"reason": "Pulled", "type": "Normal", "message": 'Container image "r/tools" already present on machine'},
    pulled("r/adapter-a:1", "850ms", "10:01:07"),
    {"reason": "Pulling", "type": "Normal", "message": 'Pulling image "x"', "lastTimestamp": at("10:00:41")},
]


def test_first_start_from_creation_to_ready() -> None:
    got = tl.startup_timeline(
        revision="r1",
        start=t("10:00:00"),
        claims=[claim("10:00:01", "10:00:38")],
        pod=ready_pod(),
        events=EVENTS,
    )
    assert got is not None
    assert got.seconds == 90
    assert [(p.name, p.seconds) for p in got.phases] == [
        ("NodeProvisioning", 37.0),
        ("Scheduling", 1.0),
        ("ImagePull", 9.35),
        ("WeightsDownload", 15.0),
        ("AdaptersDownload", 3.0),
        ("EngineStart", 19.0),
    ]
    pull = got.phases[2]
    assert (pull.start, pull.end) == (t("10:00:41.500000"), t("10:01:07"))
    status = got.to_status()
    assert status["readyAt"] == at("10:01:30") and status["seconds"] == 90
    assert status["phases"][0] == {
        "name": "NodeProvisioning",
        "startedAt": at("10:00:01"),
        "finishedAt": at("10:00:38"),
        "seconds": 37.0,
    }
    assert "NodeProvisioning 37.0s" in tl.summary(got)


def test_a_rollout_on_existing_nodes_has_no_node_phase() -> None:
    got = tl.startup_timeline(
        revision="r2", start=t("10:00:40"), claims=[claim("09:00:00", "09:01:00")], pod=ready_pod(), events=[]
    )
    assert got is not None and got.seconds == 50
    assert [p.name for p in got.phases] == [
        "Scheduling",
        "WeightsDownload",
        "AdaptersDownload",
        "EngineStart",
    ]


def test_not_ready_has_no_timeline() -> None:
    pod = ready_pod()
    pod["status"]["conditions"] = pod["status"]["conditions"][:1]
    assert tl.startup_timeline(revision="r", start=t("10:00:00"), claims=[], pod=pod, events=[]) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("26.3s", 26.3),
        ("850ms", 0.85),
        ("1m2.5s", 62.5),
        ("1h0m1s", 3601.0),
        ("12µs", 12e-6),
        ("2", None),
        ("", None),
        ("1.5x", None),
    ],
)
def test_go_durations(text: str, seconds: float | None) -> None:
    got = tl.go_duration(text)
    assert got == pytest.approx(seconds) if seconds is not None else got is None
