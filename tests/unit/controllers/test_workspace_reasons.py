"""What the workspace says about pods that do not get Ready: table-tested on status shapes the
kubelet and the controllers write (the e2e test on real nodes shows the same on live pods)."""

from __future__ import annotations

from typing import Any

import pytest

from kaitopy.api import reasons
from kaitopy.controllers.workspace import status

pytestmark = pytest.mark.unit


def pod(name: str = "p", **st: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": "2026-12-04T10:00:00Z"}, "status": st}


def container(state: dict[str, Any], last: dict[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    return {"name": "model", "state": state, "lastState": last or {}, **more}


CASES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "image missing",
        pod(containerStatuses=[container({"waiting": {"reason": "ErrImagePull", "message": "not found"}})]),
        "ImagePullError",
        "not found",
    ),
    (
        "init image missing",
        pod(initContainerStatuses=[container({"waiting": {"reason": "ImagePullBackOff", "message": "x"}})]),
        "ImagePullError",
        "container model",
    ),
    (
        "secret env missing",
        pod(
            containerStatuses=[
                container(
                    {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "hf" not found'}}
                )
            ]
        ),
        "ContainerConfigError",
        'secret "hf" not found',
    ),
    (
        "OOM, restarting",
        pod(
            containerStatuses=[
                container(
                    {"waiting": {"reason": "CrashLoopBackOff"}},
                    {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
                    resources={"limits": {"memory": "64Mi"}},
                )
            ]
        ),
        "OOMKilled",
        "limit 64Mi",
    ),
    (
        "OOM, just now",
        pod(containerStatuses=[container({"terminated": {"reason": "OOMKilled", "exitCode": 137}})]),
        "OOMKilled",
        "ran out of memory",
    ),
    (
        "crash loop quotes the last words",
        pod(
            containerStatuses=[
                container(
                    {"waiting": {"reason": "CrashLoopBackOff"}},
                    {"terminated": {"exitCode": 2, "message": "usage: ...\nerror: unrecognized --bogus"}},
                    restartCount=3,
                )
            ]
        ),
        "CrashLoop",
        "it said: error: unrecognized --bogus",
    ),
    (
        "runtime cannot start it",
        pod(
            containerStatuses=[container({"waiting": {"reason": "RunContainerError", "message": "no exec"}})]
        ),
        "CrashLoop",
        "cannot start: no exec",
    ),
    (
        "unschedulable names the resource",
        pod(
            conditions=[
                {"type": "PodScheduled", "status": "False", "message": "0/2 nodes: 2 Insufficient memory."}
            ]
        ),
        "Unschedulable",
        "Insufficient memory",
    ),
]


@pytest.mark.parametrize(("pod_", "reason", "says"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_pod_status_names_the_cause(pod_: dict[str, Any], reason: str, says: str) -> None:
    verdict = status.pod_problem([pod_])
    assert verdict is not None
    assert (verdict.status, verdict.reason) == ("False", reason)
    assert says in verdict.message
    assert reason in reasons.WORKLOAD_FAILING and reason in reasons.FIXES


def test_the_last_error_line_is_quoted() -> None:
    said = "loading\nERROR app: cannot start: unknown option(s) x\nINFO app: stopping\nINFO app: stopped\n"
    crashed = container({"waiting": {"reason": "CrashLoopBackOff"}}, {"terminated": {"message": said}})
    verdict = status.pod_problem([pod(containerStatuses=[crashed])])
    assert verdict is not None and verdict.message.endswith(
        "it said: ERROR app: cannot start: unknown option(s) x"
    )


def test_a_long_last_message_keeps_its_end() -> None:
    words = "x" * 5000 + " the real error"
    crashed = container({"waiting": {"reason": "CrashLoopBackOff"}}, {"terminated": {"message": words}})
    verdict = status.pod_problem([pod(containerStatuses=[crashed])])
    assert verdict is not None and verdict.message.endswith("the real error")
    assert len(verdict.message) < status.LAST_WORDS_CHARS + 200


def event(
    reason: str, message: str, *, type_: str = "Warning", count: int = 1, at: str = "10:00:30"
) -> dict[str, Any]:
    return {
        "reason": reason,
        "message": message,
        "type": type_,
        "count": count,
        "lastTimestamp": f"2026-12-04T{at}Z",
    }


EVENT_CASES: list[tuple[str, list[dict[str, Any]], str | None]] = [
    ("missing push secret", [event("FailedMount", 'secret "push" not found')], "VolumeMountFailed"),
    ("no sandbox", [event("FailedCreatePodSandBox", "failed to setup network")], "SandboxFailed"),
    (
        "probe failing",
        [event("Unhealthy", "Readiness probe failed: HTTP 503", count=5)],
        "ReadinessProbeFailing",
    ),
    (
        "probe failed twice: still starting",
        [event("Unhealthy", "Readiness probe failed: 503", count=2)],
        None,
    ),
    ("startup probe: loading", [event("Unhealthy", "Startup probe failed: refused", count=40)], None),
    ("normal events say nothing", [event("Pulled", "Successfully pulled", type_="Normal")], None),
    (
        "the newest warning wins",
        [
            event("FailedMount", 'secret "push" not found', at="10:00:10"),
            event("FailedCreatePodSandBox", "boom", at="10:00:50"),
        ],
        "SandboxFailed",
    ),
]


@pytest.mark.parametrize(("events", "reason"), [c[1:] for c in EVENT_CASES], ids=[c[0] for c in EVENT_CASES])
def test_pod_events_name_the_cause(events: list[dict[str, Any]], reason: str | None) -> None:
    verdict = status.events_problem(pod(), events)
    assert (verdict.reason if verdict else None) == reason


def test_refused_pods_show_through_the_deployment() -> None:
    dep = {
        "metadata": {"generation": 1},
        "status": {
            "observedGeneration": 1,
            "conditions": [
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": 'pods "m-1" is forbidden: violates PodSecurity "restricted:latest"',
                }
            ],
        },
    }
    verdict = status.workload_verdict(dep, [], 1, "r")
    assert verdict.reason == "PodsRefused" and "violates PodSecurity" in verdict.message


def test_a_failed_job_says_which_step_and_why() -> None:
    job = {
        "metadata": {"name": "t"},
        "status": {
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                }
            ]
        },
    }
    failed = pod(
        phase="Failed",
        initContainerStatuses=[
            {"name": "data", "state": {"terminated": {"exitCode": 0}}},
            {
                "name": "trainer",
                "state": {"terminated": {"exitCode": 1, "message": "ValueError: no rows in data"}},
            },
        ],
    )
    _, succeeded = status.job_verdicts(job, [failed])
    assert succeeded.reason == "TuningJobFailed"
    assert "step trainer exited with code 1; it said: ValueError: no rows in data" in succeeded.message


def test_reasons_sets_are_consistent() -> None:
    assert not (reasons.TERMINAL & reasons.WORKLOAD_FAILING - {"TuningJobFailed"})
    assert reasons.NEEDS_ACTION >= reasons.TERMINAL | reasons.WORKLOAD_FAILING
    assert set(reasons.FIXES) <= reasons.NEEDS_ACTION


def _dep(replicas: int, ready: int, updated: int) -> dict[str, Any]:
    return {
        "metadata": {"generation": 2},
        "status": {
            "observedGeneration": 2,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": updated,
        },
    }


def _revision_pod(revision: str, ready: bool) -> dict[str, Any]:
    p = pod(conditions=[{"type": "Ready", "status": "True" if ready else "False"}])
    p["metadata"]["annotations"] = {"kaito.sh/revision": revision}
    return p


def test_a_rolling_update_is_served_by_the_old_pod_until_the_new_one_is_ready() -> None:
    old, new = _revision_pod("r1", True), _revision_pod("r2", False)
    during = status.workload_verdict(_dep(2, 1, 1), [old, new], 1, "r2")
    assert (during.status, during.reason) == ("True", "RollingOut")
    assert "0 of 1 new pod(s) ready" in during.message
    assert not status.rollout_complete(_dep(2, 1, 1), 1)
    # The new revision crashes: still served, and the rollout says why it is stuck.
    new["status"]["containerStatuses"] = [container({"waiting": {"reason": "CrashLoopBackOff"}})]
    stuck = status.workload_verdict(_dep(2, 1, 1), [old, new], 1, "r2")
    assert stuck.ok and "keeps crashing" in stuck.message
    done = _dep(1, 1, 1)
    assert status.rollout_complete(done, 1)
    assert status.workload_verdict(done, [_revision_pod("r2", True)], 1, "r2").reason == "InferenceReady"
    # Recreate: the old pod is gone first, so nothing serves until the new one is ready.
    assert not status.workload_verdict(_dep(1, 0, 1), [new], 1, "r2").ok
