"""The built-in autoscaler's settings (annotations) and decision, and the /metrics parsing."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from kaitopy.controllers.inferenceset.autoscale import (
    PREFIX,
    AutoscaleSettings,
    Sample,
    SettingsError,
    held_requests_limit,
    recommend,
    settings_of,
    tokens_per_minute,
    without_rate,
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
    (
        "tokens per minute as the signal",
        AutoscaleSettings(
            max_replicas=6, target_queue_depth=None, target_tokens_per_minute=6000, scale_up_step=4
        ),
        1,
        [Sample(queue_depth=0, running=1, tokens_per_minute=13000)],
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


Z = AutoscaleSettings(min_replicas=0, max_replicas=4, target_queue_depth=2, idle_s=60)

# (case, current, samples, missing, history, idle seconds, desired) for a set that may rest at zero.
ZERO_CASES = [
    ("at zero stays at zero: the activator wakes it", 0, [], 0, [], 10_000.0, 0),
    ("idle for idle-seconds goes to zero", 1, q(0), 0, [], 60.0, 0),
    ("idle goes straight to zero from several members", 3, q(0, 0, 0), 0, [], 61.0, 0),
    ("idle with silent members still goes to zero", 2, q(0), 1, [], 61.0, 0),
    ("a request within idle-seconds keeps the member", 1, q(0), 0, [], 59.0, 1),
    ("a queue on an idle-looking set keeps it", 1, q(1), 0, [], 600.0, 1),
    ("requests running keep it", 1, [Sample(queue_depth=0, running=1)], 0, [], 600.0, 1),
    ("not idle: the load rules, and never below one", 2, q(0, 0), 0, [(0.0, 0)], 5.0, 1),
    ("not idle: a queue scales up as usual", 1, q(6), 0, [], 0.0, 3),
]


@pytest.mark.parametrize(
    ("case", "current", "samples", "missing", "history", "idle", "desired"),
    ZERO_CASES,
    ids=[c[0] for c in ZERO_CASES],
)
def test_recommend_with_scale_to_zero(
    case: str,
    current: int,
    samples: list[Sample],
    missing: int,
    history: list[tuple[float, int]],
    idle: float,
    desired: int,
) -> None:
    z = replace(Z, scale_down_stabilization_s=60)
    assert recommend(z, current, samples, missing, history, 100.0, idle_s=idle).desired == desired


def test_the_scale_to_zero_note_says_why() -> None:
    rec = recommend(Z, 2, q(0, 0), 0, [], 100.0, idle_s=75)
    assert rec.note == "scale down 2 -> 0: no request for 75s (idle-seconds 60)"


def test_scale_to_zero_settings() -> None:
    on = {PREFIX + "enabled": "true", PREFIX + "max-replicas": "2", PREFIX + "min-replicas": "0"}
    assert settings_of(on) == AutoscaleSettings(min_replicas=0, max_replicas=2)
    assert settings_of({**on, PREFIX + "idle-seconds": "30"}) == AutoscaleSettings(
        min_replicas=0, max_replicas=2, idle_s=30
    )


def test_the_note_carries_the_numbers() -> None:
    rec = recommend(S, 2, q(3, 4), 0, [], 0.0)
    assert rec.note == "scale up 2 -> 4: queue 7 and running 0 on 2 members; load asks for 4, bounds 1-6"


def test_a_sets_max_queue_for_the_activator() -> None:
    on = {PREFIX + "enabled": "true", PREFIX + "max-replicas": "2", PREFIX + "min-replicas": "0"}
    assert settings_of({**on, PREFIX + "max-queue": "20"}) == AutoscaleSettings(
        min_replicas=0, max_replicas=2, max_queue=20
    )
    assert held_requests_limit({**on, PREFIX + "max-queue": "20"}) == 20
    assert held_requests_limit(on) is None
    # Invalid settings (the controller reports them): the activator keeps its own bound.
    assert held_requests_limit({**on, PREFIX + "max-queue": "0"}) is None
    assert held_requests_limit(None) is None


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
        ({"max-replicas": "2", "min-replicas": "0", "idle-seconds": "0"}, "idle-seconds]: must be above 0"),
        ({"max-replicas": "0", "min-replicas": "0"}, "max-replicas]: must be at least 1"),
        ({"max-replicas": "2", "min-replicas": "3"}, "max-replicas]: 2 is below min-replicas 3"),
        (
            {"max-replicas": "2", "target-queue-depth": "0"},
            "target-queue-depth], target-running or target-tokens-per-minute must be above 0",
        ),
        ({"max-replicas": "2", "target-tokens-per-minute": "-5"}, "target-tokens-per-minute]: '-5' must be"),
        ({"max-replicas": "2", "max-queue": "0"}, "max-queue]: must be at least 1"),
        ({"max-replicas": "2", "max-queue": "1.5"}, "max-queue]: '1.5' must be a whole number"),
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


def test_members_are_scraped_at_their_service_cluster_ip_without_dns() -> None:
    from kaitopy.controllers.inferenceset.scrape import cluster_ip_url
    from kaitopy.runtime.cache.store import Store

    services = Store()
    services.replace(
        [
            {"metadata": {"name": "phi-0", "namespace": "ns", "resourceVersion": "1"},
             "spec": {"clusterIP": "10.96.0.42"}},
            {"metadata": {"name": "phi-1", "namespace": "ns", "resourceVersion": "1"},
             "spec": {"clusterIP": "None"}},
        ]
    )  # fmt: skip
    url = cluster_ip_url(services)
    assert url("ns", "phi-0") == "http://10.96.0.42/metrics"
    # headless or not cached yet: by name, as before
    assert url("ns", "phi-1") == "http://phi-1.ns.svc/metrics"
    assert url("ns", "phi-2") == "http://phi-2.ns.svc/metrics"


def test_a_metrics_url_template_fills_in_the_member() -> None:
    from kaitopy.controllers.inferenceset.scrape import template_url

    proxy = "http://127.0.0.1:8001/api/v1/namespaces/{namespace}/services/{member}:80/proxy/metrics"
    assert template_url(proxy)("ns", "phi-0") == (
        "http://127.0.0.1:8001/api/v1/namespaces/ns/services/phi-0:80/proxy/metrics"
    )


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("127.0.0.1:9000/{member}/metrics", "must be an http:// or https:// URL"),
        ("http://127.0.0.1:9000/{namespace}/metrics", "must contain {member}"),
        (
            "http://127.0.0.1:9000/{pod}/{member}",
            "unknown field(s) {pod}; the fields are {namespace} and {member}",
        ),
        ("http://127.0.0.1:9000/{member", "a literal brace is written"),
    ],
)
def test_a_bad_metrics_url_template_is_refused_with_the_fix(template: str, says: str) -> None:
    from kaitopy.controllers.inferenceset.scrape import template_url

    with pytest.raises(ValueError, match=re.escape(says)):
        template_url(template)


def test_the_controller_refuses_a_bad_metrics_url_flag_before_starting() -> None:
    import argparse

    from kaitopy.controllers.workspace.app import metrics_url_template_of

    with pytest.raises(SystemExit) as stopped:
        metrics_url_template_of(argparse.Namespace(inferenceset_metrics_url="http://x/{ns}/{member}"))
    assert str(stopped.value).startswith(
        "--inferenceset-metrics-url 'http://x/{ns}/{member}': unknown field(s) {ns}"
    )
    assert metrics_url_template_of(argparse.Namespace(inferenceset_metrics_url="")) == ""


def test_tokens_per_minute_is_the_counters_rate_between_two_scrapes() -> None:
    assert tokens_per_minute((100.0, 500.0), 115.0, 2000.0) == 6000.0
    assert tokens_per_minute(None, 115.0, 2000.0) is None  # first reading
    assert tokens_per_minute((100.0, 500.0), 115.0, None) is None  # the page has no counter
    assert tokens_per_minute((100.0, 500.0), 115.0, 40.0) is None  # the server restarted
    assert tokens_per_minute((100.0, 500.0), 100.0, 600.0) is None  # no time passed


def test_a_member_without_a_rate_blocks_a_scale_down_only_when_tokens_are_a_signal() -> None:
    tpm = AutoscaleSettings(max_replicas=4, target_queue_depth=None, target_tokens_per_minute=1000)
    samples = [Sample(0, 0, tokens_per_minute=0.0), Sample(0, 0, completion_tokens=5.0)]
    assert without_rate(tpm, samples) == 1
    assert without_rate(S, samples) == 0
    rec = recommend(tpm, 2, samples, without_rate(tpm, samples), [], 100.0)
    assert rec.desired == 2 and rec.note.startswith(
        "hold at 2: queue 0 and running 0, 0 tokens/min on 2 members (1 "
    )


def test_parse_reads_the_generated_tokens_counter_over_models() -> None:
    from prometheus_client import generate_latest

    from kaitopy.inference.metrics import ServerMetrics

    m = ServerMetrics()
    m.completion_tokens.labels("base").inc(100)
    m.completion_tokens.labels("adapter-a").inc(20)
    assert parse(generate_latest(m.registry).decode()) == Sample(0, 0, completion_tokens=120.0)
