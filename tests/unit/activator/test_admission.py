"""The activator's pure decisions: admission, routing, the activity Lease's name and clock."""

from __future__ import annotations

import pytest

from kaitopy.activator.admission import HoldSettings, Verdict, admit, openai_error, queue_limit, retry_after
from kaitopy.activator.route import Route, route
from kaitopy.controllers.inferenceset.activity import last_request_at, lease_body, lease_name
from kaitopy.controllers.inferenceset.front import activator_host, front_problem

pytestmark = pytest.mark.unit

H = HoldSettings(max_queue=2, max_wait_s=60, retry_after_s=7.5)

# (case, ready, replicas, wakes, held, verdict)
ADMISSION = [
    ("a ready member: forward", 1, 1, False, 0, Verdict.FORWARD),
    ("ready members forward even with a full queue", 2, 2, True, 5, Verdict.FORWARD),
    ("at zero, scale from zero on: hold", 0, 0, True, 0, Verdict.HOLD),
    ("members starting: hold, whatever the annotations", 0, 1, False, 1, Verdict.HOLD),
    ("queue full", 0, 0, True, 2, Verdict.QUEUE_FULL),
    ("at zero without scale from zero: refuse at once", 0, 0, False, 0, Verdict.ASLEEP),
]


@pytest.mark.parametrize(
    ("case", "ready", "replicas", "wakes", "held", "verdict"), ADMISSION, ids=[c[0] for c in ADMISSION]
)
def test_admit(case: str, ready: int, replicas: int, wakes: bool, held: int, verdict: Verdict) -> None:
    assert admit(ready=ready, replicas=replicas, wakes=wakes, held=held, settings=H) is verdict


def test_a_zero_queue_refuses_every_held_request() -> None:
    z = HoldSettings(max_queue=0)
    assert admit(ready=0, replicas=0, wakes=True, held=0, settings=z) is Verdict.QUEUE_FULL


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert retry_after(H) == "8"
    assert retry_after(HoldSettings(retry_after_s=0.2)) == "1"


def test_errors_are_openai_shaped() -> None:
    assert openai_error("busy", "ServiceUnavailableError", 503) == {
        "error": {"message": "busy", "type": "ServiceUnavailableError", "param": None, "code": 503}
    }


ROUTES = [
    ("phi.team-a.svc.cluster.local", "/v1/chat/completions", Route("team-a", "phi", "/v1/chat/completions")),
    ("phi.team-a.svc", "/v1/models?x=1", Route("team-a", "phi", "/v1/models?x=1")),
    ("phi.team-a:80", "/health", Route("team-a", "phi", "/health")),
    ("phi.team-a.svc.cluster.local.", "/", Route("team-a", "phi", "/")),
    ("anything", "/inferencesets/team-a/phi/v1/completions", Route("team-a", "phi", "/v1/completions")),
    ("anything", "/inferencesets/team-a/phi", Route("team-a", "phi", "/")),
    ("phi", "/v1/models", None),  # no namespace in a short name
    ("127.0.0.1:8080", "/v1/models", None),
    ("10.0.0.1", "/v1/models", None),
    ("a.b.c", "/", None),
    ("x", "/inferencesets/team-a", None),
    ("x", "/inferencesets//phi/v1", None),
]


@pytest.mark.parametrize(("host", "path", "want"), ROUTES, ids=[f"{h}{p}" for h, p, _ in ROUTES])
def test_route(host: str, path: str, want: Route | None) -> None:
    assert route(host, path) == want


def test_lease_names_are_unambiguous_and_short_enough() -> None:
    assert lease_name("team-a", "phi") == "activity.team-a.phi"
    long = lease_name("n" * 63, "s" * 253)
    assert len(long) == 253
    assert long != lease_name("n" * 63, "s" * 252 + "t")


def test_the_lease_carries_the_request_time_back() -> None:
    body = lease_body("kaito-system", "team-a", "phi", 1_700_000_000.25)
    assert body["metadata"]["namespace"] == "kaito-system"
    assert body["spec"]["renewTime"] == "2023-11-14T22:13:20.250000Z"
    assert last_request_at(body) == pytest.approx(1_700_000_000.25)
    assert last_request_at(None) is None
    assert last_request_at({"spec": {"renewTime": "not a time"}}) is None


@pytest.mark.parametrize(
    ("name", "ok"),
    [("phi", True), ("phi-3-mini", True), ("3phi", False), ("phi.v2", False), ("p" * 64, False)],
)
def test_only_a_dns_label_names_a_front_service(name: str, ok: bool) -> None:
    problem = front_problem(name)
    assert (problem is None) == ok
    if problem:
        assert problem.startswith(f"metadata.name: {name!r} cannot name a Service")


def test_the_front_points_at_the_activators_full_name() -> None:
    assert (
        activator_host("kaito-system", "cluster.local") == "kaitopy-activator.kaito-system.svc.cluster.local"
    )


# (case, activator's --max-queue, the set's max-queue annotation, held, verdict)
SET_LIMITS = [
    ("no annotation: the activator's bound", 3, None, 2, Verdict.HOLD),
    ("no annotation, at the activator's bound: full", 3, None, 3, Verdict.QUEUE_FULL),
    ("a lower set limit is full sooner", 3, 1, 1, Verdict.QUEUE_FULL),
    ("below the set limit: hold", 3, 2, 1, Verdict.HOLD),
    ("a set cannot raise the activator's bound", 3, 50, 3, Verdict.QUEUE_FULL),
]


@pytest.mark.parametrize(
    ("case", "bound", "set_limit", "held", "verdict"), SET_LIMITS, ids=[c[0] for c in SET_LIMITS]
)
def test_a_sets_max_queue_only_lowers_the_activators(
    case: str, bound: int, set_limit: int | None, held: int, verdict: Verdict
) -> None:
    s = HoldSettings(max_queue=bound)
    assert admit(ready=0, replicas=0, wakes=True, held=held, settings=s, set_limit=set_limit) is verdict
    assert queue_limit(s, set_limit) == min(bound, set_limit if set_limit is not None else bound)
