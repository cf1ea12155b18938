"""Decide: from a Workspace and what was observed about it to what to do and what to report.

Pure: no I/O and no clock (the caller passes `now`), so every case is a plain-data unit test.
`decide` lists the NodeClaims to create and delete, the objects to create, apply and delete, the
events to tell, the status to write (conditions and state) and when to look again. Where a write
changes what the status should say (a Deployment just written is rolling out, whatever its cached
copy says), the status is judged on the object as the API server will return it.

Two things come back to `decide` from outside:
- `Decision.wants_events`: pods whose events would explain more (a stuck pod, the pod whose
  start-up is recorded). The reconciler reads them (`Observer.with_events`) and decides again.
- `refused`: the API server refused to store the model's workload; decided again, the status
  says so in its words (only the cluster's admin can fix a full service IP range or a quota)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from kaitopy.api.nodeclaim import NODECLAIM
from kaitopy.controllers.workspace import adapterdelivery, egress, ingress, rollout, workload
from kaitopy.controllers.workspace import job as jobs
from kaitopy.controllers.workspace import nodes as nodesel
from kaitopy.controllers.workspace import status as st
from kaitopy.controllers.workspace import timeline as tl
from kaitopy.controllers.workspace.claims import decide_claims
from kaitopy.controllers.workspace.observe import Dying, Observed
from kaitopy.controllers.workspace.outcome import (
    Outcome,
    inference_outcome,
    tuning_outcome,
    unplannable_outcome,
)
from kaitopy.controllers.workspace.plan import InferencePlan, Settings, TuningPlan, WorkspacePlan
from kaitopy.runtime import Kind, is_controlled_by, kinds, needs_apply, set_condition, thaw
from kaitopy.runtime.apply import is_subset
from kaitopy.runtime.objects import Obj
from kaitopy.runtime.ownerrefs import set_controller_reference

WAITING_REQUEUE_S = 30.0
"""Nodes also wake the controller; this bounds a missed event while it waits for them."""
EVENTS_AFTER_S = 10.0
"""A pod younger than this is still starting: its events are not read to explain it yet."""
EXPLAIN_REQUEUE_S = 15.0
"""How often a workload that is not ready, for no reason its status shows, is looked at again: a
failing mount or probe changes only events, which do not wake the controller."""
DELETING_REQUEUE_S = 5.0
"""A deleting workspace looks again this soon; workload and claim deletions also wake it."""


@dataclass(frozen=True)
class Emit:
    """An Event about the workspace."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    action: str = "Reconcile"


@dataclass(frozen=True)
class Create:
    """Create `body`; one already there (made by an earlier pass the cache has not shown yet)
    is left as it is, and `event` is told only when this pass made it."""

    kind: Kind
    body: Mapping[str, Any]
    event: Emit | None = None


@dataclass(frozen=True)
class Apply:
    """Server-side apply `body` unless `current` (the cached copy) already matches it."""

    kind: Kind
    body: Mapping[str, Any]
    current: Obj | None


@dataclass(frozen=True)
class Delete:
    """Delete an object (one already gone is fine), then tell `event`."""

    kind: Kind
    name: str
    namespace: str | None = None
    propagation_policy: Literal["Background", "Foreground", "Orphan"] = "Background"
    event: Emit | None = None


@dataclass(frozen=True)
class Patch:
    """Merge-patch an object (one already gone is fine): the adapter list onto a model pod."""

    kind: Kind
    name: str
    namespace: str
    patch: Mapping[str, Any]


Action = Create | Apply | Delete | Emit | Patch


@dataclass(frozen=True)
class Refusal:
    """The API server's refusal of a workload write: (HTTP status, reason, message)."""

    status: int
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    status: Mapping[str, Any]
    """The workspace's whole status after this pass."""
    state: str
    claims: tuple[Action, ...] = ()
    """NodeClaims to create and delete, with their events, in order."""
    workload: tuple[Action, ...] = ()
    """The workload and what goes with it (policies, Services, the other kind's removal), in order."""
    refusable: bool = False
    """A refused workload write is shown on the workspace (decide again with `refused`) instead
    of failing the pass at once: the model's workloads; a tuning Job's refusal is retried."""
    after_status: tuple[Emit, ...] = ()
    """Events told once the status is written."""
    startup: tuple[str, tl.Timeline] | None = None
    """(preset, timeline) of a start-up recorded by this pass, for the start-up metrics."""
    requeue_after: float | None = None
    wants_events: tuple[Obj, ...] = ()
    """Pods whose events `decide` would use and `observed` lacks: read them and decide again."""


class _Conditions:
    """The status conditions being set in one pass, all with the same time and generation."""

    def __init__(self, conditions: Sequence[Mapping[str, Any]], now: datetime, generation: int | None):
        self.items: list[dict[str, Any]] = [dict(c) for c in conditions]
        self.now = now
        self.generation = generation

    def set(self, type_: str, v: st.Verdict) -> None:
        self.items = set_condition(
            self.items,
            type_,
            v.status,
            reason=v.reason,
            message=v.message,
            now=self.now,
            observed_generation=self.generation,
        )

    def set_all(self, outcome: Outcome) -> None:
        for type_, v in outcome.conditions:
            self.set(type_, v)


def _owned(ws: Obj, body: Mapping[str, Any]) -> dict[str, Any]:
    return dict(set_controller_reference(ws, dict(body)))


def after_write(current: Obj | None, desired: Mapping[str, Any]) -> Obj:
    """The workload as the API server returns it from the write of `desired`: a new one has
    generation 1 and no status; a changed spec bumps the generation, and the status (the
    previous generation's, rolled out and ready) says nothing about the new one yet."""
    if current is None:
        return {**desired, "metadata": {**desired["metadata"], "generation": 1}}
    if is_subset(desired.get("spec") or {}, current.get("spec") or {}):
        return current
    meta = current["metadata"]
    return {**current, "metadata": {**meta, "generation": int(meta.get("generation") or 0) + 1}}


def decide(
    ws: Obj,
    observed: Observed,
    settings: Settings,
    now: datetime,
    *,
    refused: Refusal | None = None,
) -> Decision:
    status = thaw(ws.get("status") or {})
    conds = _Conditions(status.get("conditions") or (), now, ws["metadata"].get("generation"))
    plan = observed.plan
    if plan is None:
        err = observed.plan_error
        reason, message = (err.reason, str(err)) if err is not None else ("InvalidWorkspace", "no plan")
        failed = unplannable_outcome(reason, message, tuning="tuning" in ws)
        conds.set_all(failed)
        status.update(conditions=conds.items, state=failed.state)
        return Decision(status, failed.state, after_status=(Emit("Warning", reason, message),))

    meta = ws["metadata"]
    byo = settings.node_provisioner == "byo"
    view = nodesel.usable_nodes(
        observed.nodes,
        plan.match_labels,
        plan.match_expressions,
        plan.instance_type,
        owner=(str(meta["name"]), str(meta["namespace"])),
    )
    nodes = {str(n["metadata"]["name"]): n for n in observed.nodes}
    claim_actions: tuple[Action, ...] = ()
    claims_verdict: st.Verdict | None = None
    if not byo:
        claim_actions, claims_verdict = _claims(ws, plan, view, nodes, observed.claims)
        conds.set(st.NODECLAIM_READY, claims_verdict)
    resource = st.resource_verdict(view.count, plan.node_count, claims_verdict, byo)
    conds.set(st.RESOURCE_READY, resource)
    requeue: float | None = None if resource.ok else WAITING_REQUEUE_S

    actions: tuple[Action, ...] = ()
    wants: list[Obj] = []
    recorded: tl.Timeline | None = None
    if plan.inference is not None:
        inf = plan.inference
        actions, verdict, written = _inference(ws, inf, resource.ok, view.ready, nodes, observed)
        if refused is not None:
            actions = ()
            verdict = st.workload_refused(refused.status, refused.reason, refused.message)
            written = observed.statefulset if inf.multi_node else observed.deployment
        revision = workload.revision(inf)
        if verdict.reason == "WorkloadNotReady":
            verdict = _explain(verdict, st.current_revision_pods(observed.pods, revision), observed, wants)
            requeue = min(requeue or EXPLAIN_REQUEUE_S, EXPLAIN_REQUEUE_S)
        outcome = inference_outcome(resource, verdict)
        if inf.hot_load:
            # Hot-load: the adapter list onto each model pod that lacks it, the servers' answers
            # into status.adapters.
            out = adapterdelivery.decide_adapters(
                observed.desired_adapters, observed.pods, observed.adapter_answers, started_with=inf.adapters
            )
            actions += tuple(
                Patch(
                    kinds.POD,
                    pod,
                    ns,
                    {"metadata": {"annotations": {workload.ADAPTER_LIST_ANNOTATION: out.text}}},
                )
                for ns, pod in out.deliver
            )
            status["adapters"] = out.status
            if out.again:
                requeue = min(requeue or adapterdelivery.REQUEUE_S, adapterdelivery.REQUEUE_S)
        if st.rollout_complete(written, inf.node_count):
            recorded = _startup_timeline(ws, inf, observed, wants)
            if recorded is not None:
                status["startup"] = recorded.to_status()
    elif plan.tuning is not None:
        actions, started, succeeded = _tuning(ws, plan.tuning, resource.ok, observed)
        if succeeded.reason == "TuningJobRunning":
            succeeded = _explain(succeeded, list(observed.pods), observed, wants)
            requeue = min(requeue or EXPLAIN_REQUEUE_S, EXPLAIN_REQUEUE_S)
        outcome = tuning_outcome(started, succeeded)
    else:
        outcome = Outcome((), "Pending")
    conds.set_all(outcome)
    status.update(
        conditions=conds.items,
        state=outcome.state,
        targetNodeCount=plan.node_count,
        workerNodes=view.ready[: max(plan.node_count, 0)],
    )
    after: tuple[Emit, ...] = ()
    startup = None
    if recorded is not None and plan.inference is not None:
        after = (Emit("Normal", "StartupRecorded", tl.summary(recorded)),)
        startup = (plan.inference.preset, recorded)
    return Decision(
        status,
        outcome.state,
        claims=claim_actions,
        workload=actions,
        refusable=plan.inference is not None,
        after_status=after,
        startup=startup,
        requeue_after=requeue,
        wants_events=tuple(wants),
    )


def _claims(
    ws: Obj,
    plan: WorkspacePlan,
    view: nodesel.NodeView,
    nodes: Mapping[str, Obj],
    claims: Sequence[Obj],
) -> tuple[tuple[Action, ...], st.Verdict]:
    meta = ws["metadata"]
    labels = {
        name: dict((nodes.get(name) or {}).get("metadata", {}).get("labels") or {}) for name in view.ready
    }
    decision = decide_claims(
        workspace_uid=str(meta["uid"]),
        node_count=plan.node_count,
        claims=claims,
        ready_nodes=view.ready,
        node_labels=labels,
    )
    actions: list[Action] = []
    for slot in decision.create:
        body = nodesel.nodeclaim(
            workspace=meta["name"],
            namespace=meta["namespace"],
            workspace_uid=meta["uid"],
            slot=slot,
            instance_type=plan.instance_type,
            match_labels=plan.match_labels,
            storage_gib=plan.storage_gib,
            gpus=plan.gpus_per_node,
        )
        name = body["metadata"]["name"]
        said = f"requested a {plan.instance_type} node (node claim {name})"
        actions.append(Create(NODECLAIM, body, Emit("Normal", "NodeClaimCreated", said, "Provision")))
    for name in decision.delete:
        said = f"released node claim {name}: matching nodes cover the workspace without it"
        actions.append(Delete(NODECLAIM, name, event=Emit("Normal", "NodeClaimDeleted", said, "Deprovision")))
    return tuple(actions), st.nodeclaims_verdict(list(decision.mine), decision.wanted)


def _inference(
    ws: Obj,
    plan: InferencePlan,
    nodes_ready: bool,
    node_names: Sequence[str],
    nodes: Mapping[str, Obj],
    observed: Observed,
) -> tuple[tuple[Action, ...], st.Verdict, Obj | None]:
    """The writes, the workload's verdict, and the workload as it will be after them."""
    multi = plan.multi_node
    current = observed.statefulset if multi else observed.deployment
    if current is None and not nodes_ready:
        why = "waiting for GPU nodes before deploying the model"
        return (), st.Verdict("False", "WaitingForNodes", why), None
    actions: list[Action] = []
    # A change between one node and several replaces the workload kind: remove the other one.
    other, other_kind = (
        (observed.deployment, kinds.DEPLOYMENT) if multi else (observed.statefulset, kinds.STATEFUL_SET)
    )
    if other is not None:
        actions.append(Delete(other_kind, plan.name, plan.namespace))
    how: rollout.Rollout | None = None
    if multi:
        if current is None:
            # The ranks listen on every interface of the pods: the fence goes up before the pods do.
            actions.append(Create(kinds.NETWORK_POLICY, _owned(ws, ingress.multinode_ingress_policy(plan))))
        headless = workload.headless_name(plan)
        actions.append(
            Apply(kinds.SERVICE, _owned(ws, workload.headless_service(plan)), observed.services.get(headless))
        )
        kind, body = kinds.STATEFUL_SET, _owned(ws, workload.statefulset(plan))
    else:
        desired = workload.deployment(plan)
        on = [nodes[name] for name in node_names if name in nodes]
        how = rollout.decide(desired["spec"]["template"], on)
        desired["spec"]["strategy"] = how.strategy
        kind, body = kinds.DEPLOYMENT, _owned(ws, desired)
    actions.append(Apply(kind, body, current))
    actions.append(Apply(kinds.SERVICE, _owned(ws, workload.service(plan)), observed.services.get(plan.name)))
    writes = needs_apply(body, current)
    if current is None:
        said = f"deployed {plan.preset} ({plan.runtime}) on {plan.node_count} node(s)"
        actions.append(Emit("Normal", "WorkloadCreated", said))
    elif writes:
        said = f"rolling out revision {workload.revision(plan)}" + (
            f" ({how.why})" if how is not None else " (one pod per node, one node at a time)"
        )
        actions.append(Emit("Normal", "WorkloadUpdated", said))
    # Judged on the workload as this pass leaves it: after a write the cache still holds the
    # previous generation, rolled out and ready, which says nothing about the one just written.
    written = after_write(current, body) if writes else current
    verdict = st.workload_verdict(written, observed.pods, plan.node_count, workload.revision(plan))
    return tuple(actions), verdict, written


def _tuning(
    ws: Obj, plan: TuningPlan, nodes_ready: bool, observed: Observed
) -> tuple[tuple[Action, ...], st.Verdict, st.Verdict]:
    current = observed.job
    if current is None and not nodes_ready:
        return (), *st.job_verdicts(None, [])
    actions: list[Action] = []
    if current is None:
        # The egress fence goes up before the Job, so no tuning pod runs without it; it is owned
        # by the workspace and goes with it.
        actions.append(Create(kinds.NETWORK_POLICY, _owned(ws, egress.tuning_egress_policy(plan))))
        current = _owned(ws, jobs.tuning_job(plan))
        actions.append(Create(kinds.JOB, current))
        actions.append(Emit("Normal", "JobStarted", f"started tuning job {plan.name}"))
    # A Job's pod template is immutable, and tuning fields are immutable on the workspace.
    return (tuple(actions), *st.job_verdicts(current, list(observed.pods)))


def _explain(verdict: st.Verdict, pods: Sequence[Obj], observed: Observed, wants: list[Obj]) -> st.Verdict:
    """A stuck pod's events, when its status does not say why (a volume that cannot be
    mounted, a readiness probe that keeps failing)."""
    pod = st.unready_pod(pods)
    # Its age on this controller's clock: creationTimestamp is the API server's, and `now` ours.
    if pod is None or observed.pod_ages.get(str(pod["metadata"]["uid"]), 0.0) < EVENTS_AFTER_S:
        return verdict
    events = observed.pod_events.get(str(pod["metadata"]["uid"]))
    if events is None:
        wants.append(pod)
        return verdict
    return st.events_problem(pod, events) or verdict


def _startup_timeline(
    ws: Obj, plan: InferencePlan, observed: Observed, wants: list[Obj]
) -> tl.Timeline | None:
    """The timeline of the start-up (or rollout) that just completed, unless this revision
    has one already."""
    revision = workload.revision(plan)
    record = (ws.get("status") or {}).get("startup") or {}
    if record.get("revision") == revision:
        return None  # a pod replaced after the start-up was recorded: not a start-up
    if not record and st.condition_true(ws, st.INFERENCE_READY):
        return None  # served before this controller recorded start-ups: its start is unknown
    current = st.current_revision_pods(observed.pods, revision)
    ready = [(tl.ready_time(p), p) for p in current]
    ready_pods = [(t, p) for t, p in ready if t is not None]
    if not ready_pods:
        return None
    _, pod = max(ready_pods, key=lambda tp: tp[0])
    # The first start counts from the workspace's creation; a later revision from its rollout.
    origin = ws if not record else min(current, key=lambda p: str(p["metadata"].get("creationTimestamp")))
    start = tl.parse_time(origin["metadata"].get("creationTimestamp"))
    if start is None:
        return None
    events = observed.pod_events.get(str(pod["metadata"]["uid"]))
    if events is None:
        wants.append(pod)
        return None
    return tl.startup_timeline(revision=revision, start=start, claims=observed.claims, pod=pod, events=events)


# -- deletion ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stop:
    """How a deleting workspace's model stops before its nodes go."""

    delete: tuple[Delete, ...]
    """Workloads to delete in the foreground (the workload stays until its pods are gone, so
    "gone" means stopped)."""
    stopping: tuple[str, ...]
    """Workloads already on their way out."""


def decide_stop(ws: Obj, dying: Dying) -> Stop:
    """The model stops before its nodes go: drained pods of a live workload would only be
    replaced by pods with no node to run on, retried by the scheduler for nothing. Nothing to
    stop when no claim is left: the finalizer goes at once."""
    if not dying.claims:
        return Stop((), ())
    delete, stopping = [], []
    for kind, obj in dying.workloads:
        if not is_controlled_by(obj, ws):
            continue
        name, namespace = str(obj["metadata"]["name"]), str(obj["metadata"]["namespace"])
        if obj["metadata"].get("deletionTimestamp"):
            stopping.append(f"{kind.kind} {name}")
        else:
            delete.append(Delete(kind, name, namespace, propagation_policy="Foreground"))
    return Stop(tuple(delete), tuple(stopping))


@dataclass(frozen=True)
class Deletion:
    remove_finalizer: bool
    status: Mapping[str, Any] | None = None
    delete_claims: tuple[Delete, ...] = ()
    requeue_after: float | None = None


def decide_deletion(ws: Obj, dying: Dying, left: Sequence[str], now: datetime) -> Deletion:
    """`left`: the workloads still there once the stop was asked for (`decide_stop`)."""
    if not dying.claims:
        return Deletion(remove_finalizer=True)
    if left:
        reason, message = "StoppingWorkload", f"stopping the model ({', '.join(left)}) before its nodes"
    else:
        reason = "DeletingNodeClaims"
        message = f"waiting for {len(dying.claims)} node claim(s) and their nodes to be deleted"
    status = thaw(ws.get("status") or {})
    status["conditions"] = set_condition(
        status.get("conditions"),
        st.WORKSPACE_DELETING,
        "True",
        reason=reason,
        message=message,
        now=now,
        observed_generation=ws["metadata"].get("generation"),
    )
    claims: tuple[Delete, ...] = ()
    if not left:
        claims = tuple(
            Delete(NODECLAIM, str(c["metadata"]["name"]))
            for c in dying.claims
            if not c["metadata"].get("deletionTimestamp")
        )
    return Deletion(False, status, claims, DELETING_REQUEUE_S)
