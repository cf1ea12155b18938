"""The built-in autoscaler's settings (annotations) and decision, and the /metrics parsing."""

from __future__ import annotations

import pytest

from kaitopy.controllers.inferenceset.autoscale import (
    PREFIX,
    AutoscaleSettings,
    Sample,
    SettingsError,
    recommend,
    settings_of,
)
from kaitopy.controllers.inferenceset.scrape import parse

pytestmark = pytest.mark.unit

S = AutoscaleSettings(
    min_replicas=1,
    max_replicas=6,
    target_queue_depth=2,
    target_running=None,
    scale_up_stabilization_s=0,
    scale_down_stabilization_s=60,
    scale_up_step=2,
    scale_down_step=1,
)


def q(*depths: float) -> list[Sample]:
    return [Sample(queue_depth=d, running=0) for d in depths]


# (case, settings, current, samples, missing, history, now, desired)
CASES = [
    ("steady load holds", S, 2, q(1, 2), 0, [], 100.0, 2),
    ("a queue scales up", S, 2, q(3, 3), 0, [], 100.0, 3),
    ("scale-up step limit", S, 1, q(10), 0, [], 100.0, 3),
    ("max bound", S, 5, q(20, 20, 20, 20, 20), 0, [], 100.0, 6),
    ("scale down waits for the window", S, 3, q(0, 0, 0), 0, [(50.0, 3)], 100.0, 3),
    ("scale down after a quiet window, one step", S, 3, q(0, 0, 0), 0, [(30.0, 3)], 100.0, 2),
    ("min bound", S, 1, q(0), 0, [], 100.0, 1),
    ("no scale down while a member does not answer", S, 3, q(0, 0), 1, [], 100.0, 3),
    ("scale up even with a member not answering", S, 2, q(8), 1, [], 100.0, 4),
    ("out of bounds returns inside at once", S, 9, q(0), 0, [], 100.0, 6),
    (
        "scale up waits for its window",
        AutoscaleSettings(max_replicas=6, scale_up_stabilization_s=30, target_queue_depth=2),
        2,
        q(6, 6),
        0,
        [(80.0, 2)],
        100.0,
        2,
    ),
    (
        "running requests as the signal",
        AutoscaleSettings(max_replicas=6, target_queue_depth=None, target_running=4, scale_up_step=4),
        1,
        [Sample(queue_depth=0, running=10)],
        0,
        [],
        100.0,
        3,
    ),
]


@pytest.mark.parametrize(
    ("case", "s", "current", "samples", "missing", "history", "now", "desired"),
    CASES,
    ids=[c[0] for c in CASES],
)
def test_recommend(
    case: str,
    s: AutoscaleSettings,
    current: int,
    samples: list[Sample],
    missing: int,
    history: list[tuple[float, int]],
    now: float,
    desired: int,
) -> None:
    assert recommend(s, current, samples, missing, history, now).desired == desired


def test_the_note_carries_the_numbers() -> None:
    rec = recommend(S, 2, q(3, 4), 0, [], 0.0)
    assert rec.note == "scale up 2 -> 4: queue 7 and running 0 on 2 members; load asks for 4, bounds 1-6"


def test_settings_off_unless_enabled() -> None:
    assert settings_of(None) is None
    assert settings_of({PREFIX + "max-replicas": "3"}) is None


def test_settings_read_with_defaults() -> None:
    s = settings_of(
        {PREFIX + "enabled": "true", PREFIX + "max-replicas": "5", PREFIX + "target-running": "8"}
    )
    assert s == AutoscaleSettings(max_replicas=5, target_running=8.0)


@pytest.mark.parametrize(
    ("annotations", "names"),
    [
        ({}, "max-replicas] is required"),
        ({"max-replicas": "x"}, "max-replicas]: 'x' is not a number"),
        ({"max-replicas": "2.5"}, "max-replicas]: '2.5' must be a whole number"),
        ({"max-replicas": "2", "min-replicas": "0"}, "min-replicas]: must be at least 1"),
        ({"max-replicas": "2", "min-replicas": "3"}, "max-replicas]: 2 is below min-replicas 3"),
        ({"max-replicas": "2", "target-queue-depth": "0"}, "target-queue-depth] or target-running"),
    ],
)
def test_bad_settings_name_the_annotation(annotations: dict[str, str], names: str) -> None:
    full = {PREFIX + "enabled": "true", **{PREFIX + k: v for k, v in annotations.items()}}
    with pytest.raises(SettingsError, match=r"metadata\.annotations\[autoscaling\.kaitopy\.io/") as err:
        settings_of(full)
    assert names in str(err.value)


def test_parse_reads_the_model_servers_gauges() -> None:
    page = (
        "# HELP kaitopy_inference_queue_depth Requests waiting for a generation slot\n"
        "# TYPE kaitopy_inference_queue_depth gauge\n"
        "kaitopy_inference_queue_depth 3.0\n"
        "# TYPE kaitopy_inference_running_requests gauge\n"
        "kaitopy_inference_running_requests 2.0\n"
        "# TYPE other gauge\nother 9.0\n"
    )
    assert parse(page) == Sample(queue_depth=3, running=2)
    assert parse("") == Sample(queue_depth=0, running=0)


def test_parse_matches_the_names_the_model_server_exports() -> None:
    from prometheus_client import generate_latest

    from kaitopy.inference.metrics import ServerMetrics

    m = ServerMetrics()
    m.queue_depth.set(5)
    m.running.set(1)
    assert parse(generate_latest(m.registry).decode()) == Sample(queue_depth=5, running=1)


def test_a_zero_window_ignores_earlier_recommendations() -> None:
    # The same instant's earlier "0" must not veto a scale-up when the window is 0 s.
    assert recommend(S, 2, q(4, 3), 0, [(100.0, 0)], 100.0).desired == 4
