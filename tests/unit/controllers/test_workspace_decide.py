"""decide over Observed: what the Workspace reconciler does and reports for each case, as plain
data, with no API server (the reconciler's integration and e2e tests run the same code live)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kaitopy.api.nodeclaim import NODECLAIM
from kaitopy.controllers.workspace import status as st
from kaitopy.controllers.workspace import workload
from kaitopy.controllers.workspace.decide import (
    EXPLAIN_REQUEUE_S,
    WAITING_REQUEUE_S,
    Apply,
    Create,
    Decision,
    Delete,
    Emit,
    Refusal,
    decide,
    decide_deletion,
    decide_stop,
)
from kaitopy.controllers.workspace.nodes import nodeclaim_name
from kaitopy.controllers.workspace.observe import Dying, Observed
from kaitopy.controllers.workspace.plan import REVISION_ANNOTATION, PlanError, Settings, WorkspacePlan
from kaitopy.controllers.workspace.planner import make_planner, parse_workspace
from kaitopy.presets import Catalog
from kaitopy.runtime import kinds
from kaitopy.runtime.apply import with_applied_hash
from kaitopy.runtime.objects import Obj

pytestmark = pytest.mark.unit

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
UID = "6c1b7e0a-0000-4000-8000-0000000000aa"
SKU = "Standard_NC24ads_A100_v4"
SETTINGS = Settings()
CATALOG = Catalog.load()


def ts(ago_s: float) -> str:
    return (NOW - timedelta(seconds=ago_s)).strftime("%Y-%m-%dT%H:%M:%SZ")


def inference_ws(**status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {
            "name": "w",
            "namespace": "ns",
            "uid": UID,
            "generation": 3,
            "creationTimestamp": ts(600),
        },
        "resource": {"instanceType": SKU, "labelSelector": {"matchLabels": {"app": "w"}}},
        "inference": {"preset": {"name": "phi-4"}},
        "status": status,
    }


def tuning_ws() -> dict[str, Any]:
    ws = inference_ws()
    del ws["inference"]
    ws["tuning"] = {
        "preset": {"name": "phi-3-mini-4k-instruct"},
        "method": "lora",
        "input": {"urls": ["https://example.com/data.parquet"]},
        "output": {"image": "registry.example.com/a:1", "imagePushSecret": "push"},
    }
    return ws


def plan_of(ws: Obj) -> WorkspacePlan:
    return make_planner(CATALOG, SETTINGS)(parse_workspace(ws))


def gpu_node(name: str, *, ready: bool = True, claim: str | None = None) -> dict[str, Any]:
    labels = {"node.kubernetes.io/instance-type": SKU, "app": "w"}
    if claim:
        labels.update(
            {"karpenter.sh/nodeclaim": claim, "kaito.sh/workspace": "w", "kaito.sh/workspacenamespace": "ns"}
        )
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "allocatable": {"nvidia.com/gpu": "1", "cpu": "24", "memory": "220Gi"},
        },
    }


def claim(slot: int, node: str | None = None, **ready: str) -> dict[str, Any]:
    status: dict[str, Any] = {"nodeName": node} if node else {}
    if ready:
        status["conditions"] = [{"type": "Ready", **ready}]
    return {"metadata": {"name": nodeclaim_name(UID, slot)}, "status": status}


def cond(d: Decision, type_: str) -> dict[str, Any]:
    return next(c for c in d.status["conditions"] if c["type"] == type_)


def served(ws: dict[str, Any], pods_ready: bool = True) -> Observed:
    """A workspace whose Deployment is cached exactly as this pass would write it, rolled out."""
    plan = plan_of(ws)
    first = decide(
        ws, Observed(plan=plan, nodes=(gpu_node("n0", claim=nodeclaim_name(UID, 0)),)), SETTINGS, NOW
    )
    body = next(a.body for a in first.workload if isinstance(a, Apply) and a.kind == kinds.DEPLOYMENT)
    deployment = dict(with_applied_hash(body))
    deployment["metadata"] = {**deployment["metadata"], "generation": 2}
    deployment["status"] = {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}
    assert plan.inference is not None
    pod = model_pod(workload.revision(plan.inference), ready=pods_ready)
    return dataclasses.replace(
        first_observed(plan),
        deployment=deployment,
        pods=(pod,),
        pod_ages={"pod-uid-1": 300.0},  # seen by this controller for five minutes
        claims=(claim(0, "n0", status="True"),),
    )


def first_observed(plan: WorkspacePlan) -> Observed:
    return Observed(
        plan=plan, nodes=(gpu_node("n0", claim=nodeclaim_name(UID, 0)),), claims=(claim(0, "n0"),)
    )


def model_pod(revision: str, *, ready: bool, age_s: float = 300) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": ts(10)}]
    return {
        "metadata": {
            "name": "w-abc",
            "namespace": "ns",
            "uid": "pod-uid-1",
            "creationTimestamp": ts(age_s),
            "annotations": {REVISION_ANNOTATION: revision},
        },
        "status": {"phase": "Running", "conditions": conditions},
    }


def job(**condition: str) -> dict[str, Any]:
    status: dict[str, Any] = {"active": 1}
    if condition:
        status = {"conditions": [{"status": "True", **condition}]}
    return {"metadata": {"name": "w", "namespace": "ns"}, "status": status}


# -- the table: (workspace, observed) -> what is decided -----------------------------------


def _waiting_for_nodes(d: Decision) -> None:
    assert d.state == "Pending" and d.requeue_after == WAITING_REQUEUE_S
    assert d.workload == ()
    assert cond(d, st.RESOURCE_READY)["status"] == "False"
    assert cond(d, st.INFERENCE_READY)["reason"] == "WaitingForNodes"


def _creating_claims(d: Decision) -> None:
    _waiting_for_nodes(d)
    (create,) = d.claims
    assert isinstance(create, Create) and create.kind == NODECLAIM
    assert create.body["metadata"]["name"] == nodeclaim_name(UID, 0)
    assert create.event is not None and create.event.reason == "NodeClaimCreated"
    assert cond(d, st.NODECLAIM_READY)["status"] == "False"


def _claim_made_no_node_yet(d: Decision) -> None:
    assert d.claims == ()  # the claim is there: never a second one
    _waiting_for_nodes(d)


def _node_lost(d: Decision) -> None:
    assert cond(d, st.NODECLAIM_READY)["reason"] == "NodeLost"
    assert d.state == "Pending" and d.claims == ()


def _surplus_claim(d: Decision) -> None:
    (delete,) = d.claims
    assert isinstance(delete, Delete) and delete.name == nodeclaim_name(UID, 0)
    assert delete.event is not None and delete.event.reason == "NodeClaimDeleted"


def _deploying(d: Decision) -> None:
    kinds_written = [(type(a).__name__, getattr(a, "kind", None)) for a in d.workload]
    assert kinds_written == [
        ("Apply", kinds.DEPLOYMENT),
        ("Apply", kinds.SERVICE),
        ("Emit", None),
    ]
    assert isinstance(d.workload[-1], Emit) and d.workload[-1].reason == "WorkloadCreated"
    assert cond(d, st.RESOURCE_READY)["status"] == "True"
    assert cond(d, st.INFERENCE_READY)["reason"] == "WorkloadNotReady"
    assert d.state == "NotReady" and d.requeue_after == EXPLAIN_REQUEUE_S


def _rollout_complete(d: Decision) -> None:
    assert d.claims == ()
    # Nothing changed: the applies are there, each matching its cached copy, and no event.
    assert not any(isinstance(a, Emit) for a in d.workload)
    assert cond(d, st.INFERENCE_READY)["status"] == "True"
    assert cond(d, st.WORKSPACE_SUCCEEDED)["status"] == "True"
    assert d.state == "Ready" and d.requeue_after is None
    assert d.status["workerNodes"] == ["n0"] and d.status["targetNodeCount"] == 1


def _rollout_in_progress(d: Decision) -> None:
    # The cached Deployment is the previous generation, rolled out and ready: the one this pass
    # writes has not rolled out, and the workspace must not claim it has.
    assert [a.reason for a in d.workload if isinstance(a, Emit)] == ["WorkloadUpdated"]
    assert cond(d, st.INFERENCE_READY)["status"] == "False"
    assert cond(d, st.WORKSPACE_SUCCEEDED)["status"] == "False"
    assert d.state == "NotReady"


def _tuning_starts(d: Decision) -> None:
    assert [(type(a).__name__, getattr(a, "kind", None)) for a in d.workload] == [
        ("Create", kinds.NETWORK_POLICY),
        ("Create", kinds.JOB),
        ("Emit", None),
    ]
    assert not d.refusable  # a refused Job fails the pass; it is not a workload verdict
    assert cond(d, st.JOB_STARTED)["status"] == "True"
    assert d.state == "Running"


def _tuning_running(d: Decision) -> None:
    assert d.workload == ()  # a Job's template is immutable: never re-applied
    assert cond(d, st.WORKSPACE_SUCCEEDED)["reason"] == "TuningJobRunning"
    assert d.state == "Running" and d.requeue_after == EXPLAIN_REQUEUE_S


def _tuning_succeeded(d: Decision) -> None:
    assert cond(d, st.WORKSPACE_SUCCEEDED)["status"] == "True"
    assert d.state == "Succeeded" and d.requeue_after is None


def _tuning_failed(d: Decision) -> None:
    succeeded = cond(d, st.WORKSPACE_SUCCEEDED)
    assert succeeded["reason"] == "TuningJobFailed" and "BackoffLimitExceeded" in succeeded["message"]
    assert d.state == "Failed"


def _plan_error(d: Decision) -> None:
    assert d.state == "NotReady" and d.claims == () and d.workload == ()
    assert cond(d, st.WORKSPACE_SUCCEEDED)["reason"] == "InsufficientGPUMemory"
    assert d.after_status == (Emit("Warning", "InsufficientGPUMemory", "too big"),)
    assert "targetNodeCount" not in d.status


def _case_table() -> dict[
    str, tuple[Callable[[], tuple[Obj, Observed, Settings]], Callable[[Decision], None]]
]:
    inf = inference_ws()
    plan = plan_of(inf)
    tplan = plan_of(tuning_ws())
    nodes = (gpu_node("n0", claim=nodeclaim_name(UID, 0)),)
    assert plan.inference is not None

    def rolled_back() -> tuple[Obj, Observed, Settings]:
        ws = inference_ws()
        obs = served(ws)
        old = dict(obs.deployment or {})
        # The previous revision: another image, so another pod template.
        old["spec"] = {**old["spec"], "template": {**old["spec"]["template"], "spec": {"containers": []}}}
        return ws, dataclasses.replace(obs, deployment=old), SETTINGS

    lost = claim(0, "n0", status="False", reason="InstanceLost", message="instance i-1 is gone")
    return {
        "waiting for nodes (bring your own)": (
            lambda: (inf, Observed(plan=plan), dataclasses.replace(SETTINGS, node_provisioner="byo")),
            lambda d: (_waiting_for_nodes(d), d.claims == () or pytest.fail("byo makes no claims")),
        ),
        "creating claims": (lambda: (inf, Observed(plan=plan), SETTINGS), _creating_claims),
        "claim made, node not joined": (
            lambda: (inf, Observed(plan=plan, claims=(claim(0),)), SETTINGS),
            _claim_made_no_node_yet,
        ),
        "node lost": (
            lambda: (
                inf,
                Observed(plan=plan, claims=(lost,), nodes=(gpu_node("n0", ready=False),)),
                SETTINGS,
            ),
            _node_lost,
        ),
        "a returned node of the user's makes the claim surplus": (
            lambda: (inf, Observed(plan=plan, claims=(claim(0),), nodes=(gpu_node("byo"),)), SETTINGS),
            _surplus_claim,
        ),
        "nodes ready: deploy": (
            lambda: (
                inf,
                Observed(plan=plan, claims=(claim(0, "n0", status="True"),), nodes=nodes),
                SETTINGS,
            ),
            _deploying,
        ),
        "rollout complete": (lambda: (inf, served(inf), SETTINGS), _rollout_complete),
        "rollout in progress": (rolled_back, _rollout_in_progress),
        "tuning job starts": (
            lambda: (tuning_ws(), Observed(plan=tplan, nodes=nodes, claims=(claim(0, "n0"),)), SETTINGS),
            _tuning_starts,
        ),
        "tuning job running": (
            lambda: (
                tuning_ws(),
                Observed(plan=tplan, nodes=nodes, claims=(claim(0, "n0"),), job=job()),
                SETTINGS,
            ),
            _tuning_running,
        ),
        "tuning job succeeded": (
            lambda: (
                tuning_ws(),
                Observed(plan=tplan, nodes=nodes, claims=(claim(0, "n0"),), job=job(type="Complete")),
                SETTINGS,
            ),
            _tuning_succeeded,
        ),
        "tuning job failed": (
            lambda: (
                tuning_ws(),
                Observed(
                    plan=tplan,
                    nodes=nodes,
                    claims=(claim(0, "n0"),),
                    job=job(type="Failed", reason="BackoffLimitExceeded"),
                ),
                SETTINGS,
            ),
            _tuning_failed,
        ),
        "plan error": (
            lambda: (
                inf,
                Observed(plan=None, plan_error=PlanError("InsufficientGPUMemory", "too big")),
                SETTINGS,
            ),
            _plan_error,
        ),
    }


CASES = _case_table()


@pytest.mark.parametrize("case", list(CASES))
def test_decide(case: str) -> None:
    given, check = CASES[case]
    ws, observed, settings = given()
    decision = decide(ws, observed, settings, NOW)
    check(decision)
    for c in decision.status.get("conditions", ()):
        assert c["observedGeneration"] == 3  # every condition says which spec it judged


def test_a_tuning_plan_error_is_a_failed_run() -> None:
    d = decide(
        tuning_ws(), Observed(plan=None, plan_error=PlanError("InvalidPreset", "no such")), SETTINGS, NOW
    )
    assert d.state == "Failed"


def test_a_refused_workload_is_reported_in_the_api_servers_words() -> None:
    ws = inference_ws()
    nodes = (gpu_node("n0", claim=nodeclaim_name(UID, 0)),)
    observed = Observed(plan=plan_of(ws), claims=(claim(0, "n0", status="True"),), nodes=nodes)
    assert decide(ws, observed, SETTINGS, NOW).refusable
    refusal = Refusal(403, "Forbidden", 'exceeded quota: "no-services"')
    d = decide(ws, observed, SETTINGS, NOW, refused=refusal)
    assert d.workload == ()
    inference = cond(d, st.INFERENCE_READY)
    assert inference["reason"] == "WorkloadRefused" and "no-services" in inference["message"]


def test_a_stuck_pod_asks_for_its_events_then_they_explain_it() -> None:
    ws = inference_ws()
    observed = served(ws, pods_ready=False)
    assert observed.deployment is not None
    observed = dataclasses.replace(
        observed,
        deployment={
            **observed.deployment,
            "status": {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1},
        },
    )
    first = decide(ws, observed, SETTINGS, NOW)
    assert [p["metadata"]["uid"] for p in first.wants_events] == ["pod-uid-1"]
    assert cond(first, st.INFERENCE_READY)["reason"] == "WorkloadNotReady"
    mount = {
        "type": "Warning",
        "reason": "FailedMount",
        "message": 'secret "hf" not found',
        "lastTimestamp": ts(5),
    }
    again = decide(ws, dataclasses.replace(observed, pod_events={"pod-uid-1": (mount,)}), SETTINGS, NOW)
    assert again.wants_events == ()
    assert cond(again, st.INFERENCE_READY)["reason"] == "VolumeMountFailed"
    assert again.requeue_after == EXPLAIN_REQUEUE_S


def test_a_pod_still_starting_is_not_explained_yet() -> None:
    ws = inference_ws()
    observed = served(ws, pods_ready=False)
    assert (
        observed.deployment is not None and observed.plan is not None and observed.plan.inference is not None
    )
    young = model_pod(workload.revision(observed.plan.inference), ready=False, age_s=3)
    deployment = {
        **observed.deployment,
        "status": {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1},
    }
    d = decide(
        ws,
        dataclasses.replace(observed, deployment=deployment, pods=(young,), pod_ages={"pod-uid-1": 3.0}),
        SETTINGS,
        NOW,
    )
    assert d.wants_events == ()


def _stuck_pod(created_ago_s: float, seen_s: float) -> Observed:
    """A pod not Ready, created `created_ago_s` before NOW by the API server's clock and seen by
    this controller for `seen_s` seconds."""
    ws = inference_ws()
    observed = served(ws, pods_ready=False)
    assert observed.deployment is not None and observed.plan is not None and observed.plan.inference
    pod = model_pod(workload.revision(observed.plan.inference), ready=False, age_s=created_ago_s)
    deployment = {
        **observed.deployment,
        "status": {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1},
    }
    return dataclasses.replace(observed, deployment=deployment, pods=(pod,), pod_ages={"pod-uid-1": seen_s})


def test_a_pod_age_is_read_on_the_controllers_clock_not_against_the_servers() -> None:
    # The API server's clock an hour behind ours: its new pod looks an hour old. Not stuck yet.
    behind = decide(inference_ws(), _stuck_pod(created_ago_s=3600, seen_s=2), SETTINGS, NOW)
    assert behind.wants_events == ()
    # An hour ahead: the pod looks created in the future, yet it has been stuck for a minute.
    ahead = decide(inference_ws(), _stuck_pod(created_ago_s=-3600, seen_s=60), SETTINGS, NOW)
    assert [p["metadata"]["uid"] for p in ahead.wants_events] == ["pod-uid-1"]


def test_a_completed_first_start_is_recorded_once_its_pod_events_are_read() -> None:
    ws = inference_ws()
    observed = served(ws)
    first = decide(ws, observed, SETTINGS, NOW)
    assert [p["metadata"]["uid"] for p in first.wants_events] == ["pod-uid-1"]
    d = decide(ws, dataclasses.replace(observed, pod_events={"pod-uid-1": ()}), SETTINGS, NOW)
    assert d.startup is not None and d.status["startup"]["revision"] == d.startup[1].revision
    assert [e.reason for e in d.after_status] == ["StartupRecorded"]
    # Recorded: the next pass neither asks for events nor records it again.
    recorded = inference_ws(**d.status)
    d2 = decide(recorded, observed, SETTINGS, NOW)
    assert d2.wants_events == () and d2.startup is None


# -- deletion -------------------------------------------------------------------------------


def owned_deployment(*, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "w",
        "namespace": "ns",
        "ownerReferences": [{"uid": UID, "controller": True, "kind": "Workspace", "name": "w"}],
    }
    if deleting:
        meta["deletionTimestamp"] = ts(1)
    return {"metadata": meta}


def test_deletion_with_no_claim_left_removes_the_finalizer() -> None:
    dying = Dying(claims=(), workloads=((kinds.DEPLOYMENT, owned_deployment()),))
    assert decide_stop(inference_ws(), dying).delete == ()  # nothing to wait for
    assert decide_deletion(inference_ws(), dying, [], NOW).remove_finalizer


def test_deletion_stops_the_model_before_its_nodes() -> None:
    ws = inference_ws()
    dying = Dying(claims=(claim(0, "n0"),), workloads=((kinds.DEPLOYMENT, owned_deployment()),))
    stop = decide_stop(ws, dying)
    assert stop.delete == (Delete(kinds.DEPLOYMENT, "w", "ns", propagation_policy="Foreground"),)
    d = decide_deletion(ws, dying, ["Deployment w"], NOW)
    assert not d.remove_finalizer and d.delete_claims == ()  # the nodes stay while pods stop
    assert d.status is not None
    deleting = next(c for c in d.status["conditions"] if c["type"] == st.WORKSPACE_DELETING)
    assert deleting["reason"] == "StoppingWorkload" and deleting["observedGeneration"] == 3


def test_deletion_releases_the_claims_once_the_model_stopped() -> None:
    ws = inference_ws()
    foreign = {"metadata": {"name": "w", "namespace": "ns"}}  # not ours: never deleted
    gone = {"metadata": {"name": nodeclaim_name(UID, 1), "deletionTimestamp": ts(1)}}
    dying = Dying(claims=(claim(0), gone), workloads=((kinds.JOB, foreign),))
    assert decide_stop(ws, dying).delete == ()
    d = decide_deletion(ws, dying, [], NOW)
    assert d.delete_claims == (Delete(NODECLAIM, nodeclaim_name(UID, 0)),)
    assert d.status is not None
    assert (
        next(c for c in d.status["conditions"] if c["type"] == st.WORKSPACE_DELETING)["reason"]
        == "DeletingNodeClaims"
    )


def test_a_workload_already_stopping_is_waited_for_not_deleted_again() -> None:
    dying = Dying(claims=(claim(0),), workloads=((kinds.DEPLOYMENT, owned_deployment(deleting=True)),))
    stop = decide_stop(inference_ws(), dying)
    assert stop.delete == () and stop.stopping == ("Deployment w",)
