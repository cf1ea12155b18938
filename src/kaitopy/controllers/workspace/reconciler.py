"""The Workspace reconciler: observe (cache) -> decide (pure modules) -> act (writes that are
skipped when nothing changed). Level-triggered: every pass recomputes everything from what it sees."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from kaitopy.api.defaultconfigs import tuning_template
from kaitopy.api.nodeclaim import NODECLAIM
from kaitopy.controllers.workspace import adapterdelivery, egress, ingress, rollout, workload
from kaitopy.controllers.workspace import job as jobs
from kaitopy.controllers.workspace import nodes as nodesel
from kaitopy.controllers.workspace import status as st
from kaitopy.controllers.workspace import timeline as tl
from kaitopy.controllers.workspace.claims import decide_claims
from kaitopy.controllers.workspace.defaultconfigs import resolve_config
from kaitopy.controllers.workspace.inferenceconfig import configured_max_model_len
from kaitopy.controllers.workspace.metrics import StartupMetrics
from kaitopy.controllers.workspace.outcome import (
    Outcome,
    inference_outcome,
    tuning_outcome,
    unplannable_outcome,
)
from kaitopy.controllers.workspace.plan import (
    WORKSPACE_LABEL,
    WORKSPACE_NAMESPACE_LABEL,
    InferencePlan,
    PlanError,
    Settings,
    WorkspacePlan,
)
from kaitopy.runtime import (
    AlreadyExists,
    ApiError,
    Client,
    Conflict,
    EventRecorder,
    Forbidden,
    Kind,
    NotFound,
    Request,
    Result,
    add_finalizer,
    apply,
    has_finalizer,
    is_controlled_by,
    is_deleting,
    kinds,
    patch_status,
    remove_finalizer,
    set_condition,
    set_controller_reference,
    thaw,
)
from kaitopy.runtime.objects import Obj
from kaitopy.runtime.reconcile import reconcile_logger
from kaitopy.runtime.store import Store
from kaitopy.runtime.writes import RecentWrites

FINALIZER = "workspace.finalizer.kaito.sh"
FIELD_MANAGER = "kaitopy-workspace"
CLAIMS_BY_WORKSPACE = "by-workspace"
PODS_BY_WORKSPACE = "by-workspace"
WAITING_REQUEUE_S = 30.0
POD_EVENT = Kind("", "v1", "Event", "events")
"""The kubelet's events about pods: core/v1, which can be field-selected by the pod's uid."""
EVENTS_AFTER_S = 10.0
"""A pod younger than this is still starting: its events are not read to explain it yet."""
EXPLAIN_REQUEUE_S = 15.0
"""How often a workload that is not ready, for no reason its status shows, is looked at again: a
failing mount or probe changes only events, which do not wake the controller."""
log = reconcile_logger(__name__)


class Planner(Protocol):
    """Workspace (and the context its inference config asks for) to plan; raises PlanError."""

    def __call__(self, ws: Obj, *, max_model_len: int | None = None) -> WorkspacePlan: ...


def workspace_key_of_labels(obj: Obj, default_namespace: str | None = None) -> list[str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    name = labels.get(WORKSPACE_LABEL)
    ns = (
        labels.get(WORKSPACE_NAMESPACE_LABEL)
        or default_namespace
        or (obj.get("metadata") or {}).get("namespace")
    )
    return [f"{ns}/{name}"] if name and ns else []


@dataclass
class Stores:
    workspaces: Store
    nodes: Store
    claims: Store
    deployments: Store
    statefulsets: Store
    services: Store
    jobs: Store
    pods: Store


class WorkspaceReconciler:
    def __init__(
        self,
        client: Client,
        stores: Stores,
        planner: Planner,
        recorder: EventRecorder,
        settings: Settings,
        workspace_kind: Kind,
        *,
        startup: StartupMetrics | None = None,
        adapter_reader: adapterdelivery.AdapterReader | None = None,
    ) -> None:
        self.client = client
        self.adapters = adapterdelivery.AdapterDelivery(
            client, adapter_reader or adapterdelivery.HttpAdapterReader()
        )
        self.startup = startup
        self.s = stores
        self.planner = planner
        self.recorder = recorder
        self.settings = settings
        self.kind = workspace_kind
        # This controller's own writes, until the watch brings them: reconciling an older copy
        # would fail its conditional status patch with Conflict (or undo the newer status).
        self.latest = RecentWrites(stores.workspaces)

    @property
    def byo(self) -> bool:
        return self.settings.node_provisioner == "byo"

    async def reconcile(self, request: Request) -> Result | None:
        ws = self.latest.get(request.key)
        if ws is None:
            return None
        if is_deleting(ws):
            return await self._finalize(ws)
        if not has_finalizer(ws, FINALIZER):
            ws = await add_finalizer(self.client, self.kind, ws, FINALIZER)
            self.latest.remember(ws)
        now = datetime.now(UTC)
        status = thaw(ws.get("status") or {})
        conds: list[dict[str, Any]] = list(status.get("conditions") or [])
        generation = ws["metadata"].get("generation")

        def setc(verdict_type: str, v: st.Verdict) -> None:
            nonlocal conds
            conds = set_condition(
                conds,
                verdict_type,
                v.status,
                reason=v.reason,
                message=v.message,
                now=now,
                observed_generation=generation,
            )

        try:
            # Sized for the context the webhook admitted: the inference config's, if it sets one.
            context = await configured_max_model_len(self.client, ws, self.settings.operator_namespace)
            plan = self.planner(ws, max_model_len=context)
        except PlanError as err:
            failed = unplannable_outcome(err.reason, str(err), tuning="tuning" in ws)
            for ctype, v in failed.conditions:
                setc(ctype, v)
            status.update(conditions=conds, state=failed.state)
            self.latest.remember((await patch_status(self.client, self.kind, ws, status))[0])
            await self.recorder.event(ws, "Warning", err.reason, str(err))
            return None
        plan = await self._with_default_configs(ws, plan)
        # Hot-load: an adapter edit alone keeps the running template (no rollout); the list goes to the pods.
        desired_adapters = plan.inference.adapters if plan.inference is not None else ()
        if plan.inference is not None:
            inference = adapterdelivery.pinned(plan.inference, self._workload_of(plan.inference))
            plan = dataclasses.replace(plan, inference=inference)

        requeue: float | None = None
        # -- nodes ----------------------------------------------------------------------------
        view = nodesel.usable_nodes(
            self.s.nodes.list(),
            plan.match_labels,
            plan.match_expressions,
            plan.instance_type,
            owner=(str(ws["metadata"]["name"]), str(ws["metadata"]["namespace"])),
        )
        claims_verdict: st.Verdict | None = None
        if not self.byo:
            claims_verdict = await self._ensure_claims(ws, plan, view)
            setc(st.NODECLAIM_READY, claims_verdict)
        resource = st.resource_verdict(view.count, plan.node_count, claims_verdict, self.byo)
        setc(st.RESOURCE_READY, resource)
        if not resource.ok:
            requeue = WAITING_REQUEUE_S  # nodes also wake us up; this bounds a missed event

        # -- workload -------------------------------------------------------------------------
        refused: ApiError | None = None
        recorded: tl.Timeline | None = None
        if plan.inference is not None:
            was_ready = st.condition_true(ws, st.INFERENCE_READY)
            workload_obj = self._workload_of(plan.inference)
            try:
                verdict, workload_obj = await self._ensure_inference(
                    ws, plan.inference, resource.ok, view.ready
                )
            except Conflict:
                raise  # a stale cache: the retry reads fresh data, nothing to tell the user
            except ApiError as err:
                # Show why on the workspace (e.g. "failed to allocate a serviceIP: range is full"),
                # then fail the reconcile so it retries with backoff.
                refused = err
                verdict = st.workload_refused(err.status, err.reason, err.message)
            pods = self._pods_of(plan.inference.namespace, plan.inference.name)
            if verdict.reason == "WorkloadNotReady":
                verdict = await self._explain(
                    verdict, st.current_revision_pods(pods, workload.revision(plan.inference)), now
                )
                requeue = min(requeue or EXPLAIN_REQUEUE_S, EXPLAIN_REQUEUE_S)
            outcome = inference_outcome(resource, verdict)
            if plan.inference.hot_load:
                status["adapters"], adapters_pending = await self.adapters.sync(
                    plan.inference, desired_adapters, pods
                )
                if adapters_pending:
                    requeue = min(requeue or adapterdelivery.REQUEUE_S, adapterdelivery.REQUEUE_S)
            if st.rollout_complete(workload_obj, plan.inference.node_count):
                recorded = await self._startup_timeline(ws, plan.inference, pods, was_ready)
                if recorded is not None:
                    status["startup"] = recorded.to_status()
        elif plan.tuning is not None:
            started, succeeded = await self._ensure_tuning(ws, plan, resource.ok)
            if succeeded.reason == "TuningJobRunning":
                succeeded = await self._explain(
                    succeeded, self._pods_of(plan.tuning.namespace, plan.tuning.name), now
                )
                requeue = min(requeue or EXPLAIN_REQUEUE_S, EXPLAIN_REQUEUE_S)
            outcome = tuning_outcome(started, succeeded)
        else:
            outcome = Outcome((), "Pending")
        for ctype, v in outcome.conditions:
            setc(ctype, v)
        state = outcome.state

        status.update(
            conditions=conds,
            state=state,
            targetNodeCount=plan.node_count,
            workerNodes=view.ready[: max(plan.node_count, 0)],
        )
        stored, written = await patch_status(self.client, self.kind, ws, status)
        self.latest.remember(stored)
        if written:
            log.info("workspace status", extra={"state": state, "workspace": request.key})
        if recorded is not None and plan.inference is not None:
            if self.startup is not None:
                self.startup.observe(plan.inference.preset, recorded)
            await self.recorder.event(ws, "Normal", "StartupRecorded", tl.summary(recorded))
        if refused is not None:
            raise refused
        return Result(requeue_after=requeue) if requeue else None

    async def _with_default_configs(self, ws: Obj, plan: WorkspacePlan) -> WorkspacePlan:
        """The plan with the ConfigMap each workload mounts settled: Kaito's default template for
        a tuning method when tuning.config is empty, and a template name copied into the
        workspace's namespace from the operator's where it is missing there."""
        ns = self.settings.operator_namespace
        if plan.tuning is not None:
            t = plan.tuning
            name = await resolve_config(self.client, ws, t.config_map, tuning_template(t.method), ns)
            if name != t.config_map:
                plan = dataclasses.replace(plan, tuning=dataclasses.replace(t, config_map=name))
        if plan.inference is not None and plan.inference.config_map:
            i = plan.inference
            name = await resolve_config(self.client, ws, i.config_map, None, ns)
            if name != i.config_map:
                plan = dataclasses.replace(plan, inference=dataclasses.replace(i, config_map=name))
        return plan

    # -- nodes --------------------------------------------------------------------------------

    def claims_of(self, ws: Obj) -> list[Obj]:
        key = f"{ws['metadata']['namespace']}/{ws['metadata']['name']}"
        return sorted(self.s.claims.by_index(CLAIMS_BY_WORKSPACE, key), key=lambda c: c["metadata"]["name"])

    async def live_claims_of(self, ws: Obj) -> list[Obj]:
        """The workspace's claims as the API server has them now (label-selected)."""
        meta = ws["metadata"]
        found = await self.client.list(
            NODECLAIM,
            label_selector=f"{WORKSPACE_LABEL}={meta['name']},{WORKSPACE_NAMESPACE_LABEL}={meta['namespace']}",
        )
        return sorted(found.items, key=lambda c: str(c["metadata"]["name"]))

    async def _ensure_claims(self, ws: Obj, plan: WorkspacePlan, view: nodesel.NodeView) -> st.Verdict:
        meta = ws["metadata"]
        labels = {}
        for name in view.ready:
            node = self.s.nodes.get(name)
            labels[name] = dict(((node or {}).get("metadata") or {}).get("labels") or {})
        decision = decide_claims(
            workspace_uid=str(meta["uid"]),
            node_count=plan.node_count,
            claims=self.claims_of(ws),
            ready_nodes=view.ready,
            node_labels=labels,
        )
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
            try:
                await self.client.create(NODECLAIM, body)
            except AlreadyExists:
                continue  # made by an earlier pass whose event is not in the cache yet
            await self.recorder.event(
                ws,
                "Normal",
                "NodeClaimCreated",
                f"requested a {plan.instance_type} node (node claim {name})",
                action="Provision",
            )
        for name in decision.delete:
            with contextlib.suppress(NotFound):
                await self.client.delete(NODECLAIM, name)
            await self.recorder.event(
                ws,
                "Normal",
                "NodeClaimDeleted",
                f"released node claim {name}: matching nodes cover the workspace without it",
                action="Deprovision",
            )
        return st.nodeclaims_verdict(list(decision.mine), decision.wanted)

    # -- inference ----------------------------------------------------------------------------

    async def _apply_owned(self, ws: Obj, kind: Kind, body: dict[str, Any], store: Store) -> Obj:
        desired = dict(set_controller_reference(ws, body))
        key = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
        obj, written = await apply(
            self.client, kind, desired, current=store.get(key), field_manager=FIELD_MANAGER
        )
        if written:
            log.info("applied", extra={"kind": kind.kind, "object": key})
        return obj

    async def _ensure_inference(
        self, ws: Obj, plan: InferencePlan, nodes_ready: bool, node_names: Sequence[str]
    ) -> tuple[st.Verdict, Obj | None]:
        """The workload's verdict, and the newest copy of the workload this pass knows of."""
        key = f"{plan.namespace}/{plan.name}"
        multi = plan.multi_node
        current_store = self.s.statefulsets if multi else self.s.deployments
        current = current_store.get(key)
        if current is None and not nodes_ready:
            why = "waiting for GPU nodes before deploying the model"
            return st.Verdict("False", "WaitingForNodes", why), None
        # A change between one node and several replaces the workload kind: remove the other one.
        other_kind, other_store = (
            (kinds.DEPLOYMENT, self.s.deployments) if multi else (kinds.STATEFUL_SET, self.s.statefulsets)
        )
        if other_store.get(key) is not None:
            with contextlib.suppress(NotFound):
                await self.client.delete(other_kind, plan.name, namespace=plan.namespace)
        how: rollout.Rollout | None = None
        if multi:
            if current is None:
                # Ray listens on every interface of the pods: the fence goes up before the pods do.
                policy = dict(set_controller_reference(ws, ingress.multinode_ingress_policy(plan)))
                with contextlib.suppress(AlreadyExists):
                    await self.client.create(kinds.NETWORK_POLICY, policy)
            await self._apply_owned(ws, kinds.SERVICE, workload.headless_service(plan), self.s.services)
            obj = await self._apply_owned(ws, kinds.STATEFUL_SET, workload.statefulset(plan), current_store)
        else:
            body = workload.deployment(plan)
            nodes = [n for n in (self.s.nodes.get(name) for name in node_names) if n is not None]
            how = rollout.decide(body["spec"]["template"], nodes)
            body["spec"]["strategy"] = how.strategy
            obj = await self._apply_owned(ws, kinds.DEPLOYMENT, body, current_store)
        await self._apply_owned(ws, kinds.SERVICE, workload.service(plan), self.s.services)
        if obj is not current and current is not None:
            await self.recorder.event(
                ws,
                "Normal",
                "WorkloadUpdated",
                f"rolling out revision {workload.revision(plan)}"
                + (f" ({how.why})" if how is not None else " (one pod per node, one node at a time)"),
            )
        elif current is None:
            await self.recorder.event(
                ws,
                "Normal",
                "WorkloadCreated",
                f"deployed {plan.preset} ({plan.runtime}) on {plan.node_count} node(s)",
            )
        pods = self.s.pods.by_index(PODS_BY_WORKSPACE, key)
        # `obj` is what this pass wrote, or the cached copy when nothing changed: after a write the
        # cache still holds the previous generation, rolled out and ready, which says nothing
        # about the one just written.
        return st.workload_verdict(obj, pods, plan.node_count, workload.revision(plan)), obj

    def _pods_of(self, namespace: str, name: str) -> list[Obj]:
        return self.s.pods.by_index(PODS_BY_WORKSPACE, f"{namespace}/{name}")

    async def _pod_events(self, pod: Obj) -> list[dict[str, Any]]:
        """The events about one pod (the kubelet's pulls, mounts, probes), read on demand: only
        for a pod that is stuck or has just become Ready, so no cluster-wide event watch."""
        meta = pod["metadata"]
        try:
            found = await self.client.list(
                POD_EVENT, meta["namespace"], field_selector=f"involvedObject.uid={meta['uid']}"
            )
        except Forbidden as err:
            # RBAC older than this code: the workspace says less, but still works.
            log.warning("cannot read pod events", extra={"pod": meta["name"], "error": str(err)})
            return []
        return found.items

    async def _explain(self, verdict: st.Verdict, pods: list[Obj], now: datetime) -> st.Verdict:
        """A stuck pod's events, when its status does not say why (a volume that cannot be
        mounted, a readiness probe that keeps failing)."""
        pod = st.unready_pod(pods)
        created = tl.parse_time(pod["metadata"].get("creationTimestamp")) if pod is not None else None
        if pod is None or created is None or (now - created).total_seconds() < EVENTS_AFTER_S:
            return verdict
        return st.events_problem(pod, await self._pod_events(pod)) or verdict

    def _workload_of(self, plan: InferencePlan) -> Obj | None:
        store = self.s.statefulsets if plan.multi_node else self.s.deployments
        return store.get(f"{plan.namespace}/{plan.name}")

    async def _startup_timeline(
        self, ws: Obj, plan: InferencePlan, pods: list[Obj], was_ready: bool
    ) -> tl.Timeline | None:
        """The timeline of the start-up (or rollout) that just completed, unless this revision
        has one already."""
        revision = workload.revision(plan)
        record = (ws.get("status") or {}).get("startup") or {}
        if record.get("revision") == revision:
            return None  # a pod replaced after the start-up was recorded: not a start-up
        if not record and was_ready:
            return None  # served before this controller recorded start-ups: its start is unknown
        current = st.current_revision_pods(pods, revision)
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
        return tl.startup_timeline(
            revision=revision,
            start=start,
            claims=self.claims_of(ws),
            pod=pod,
            events=await self._pod_events(pod),
        )

    # -- tuning -------------------------------------------------------------------------------

    async def _ensure_tuning(
        self, ws: Obj, plan: WorkspacePlan, nodes_ready: bool
    ) -> tuple[st.Verdict, st.Verdict]:
        assert plan.tuning is not None
        key = f"{plan.tuning.namespace}/{plan.tuning.name}"
        current = self.s.jobs.get(key)
        if current is None and not nodes_ready:
            return st.job_verdicts(None, [])
        if current is None:
            # The egress fence goes up before the Job, so no tuning pod runs without it; it is owned
            # by the workspace and goes with it.
            policy = dict(set_controller_reference(ws, egress.tuning_egress_policy(plan.tuning)))
            with contextlib.suppress(AlreadyExists):
                await self.client.create(kinds.NETWORK_POLICY, policy)
            body = dict(set_controller_reference(ws, jobs.tuning_job(plan.tuning)))
            try:
                current = await self.client.create(kinds.JOB, body)
            except AlreadyExists:
                current = await self.client.get(kinds.JOB, plan.tuning.name, namespace=plan.tuning.namespace)
            await self.recorder.event(ws, "Normal", "JobStarted", f"started tuning job {plan.tuning.name}")
        # A Job's pod template is immutable, and tuning fields are immutable on the workspace.
        pods = self.s.pods.by_index(PODS_BY_WORKSPACE, key)
        return st.job_verdicts(current, pods)

    # -- deletion -----------------------------------------------------------------------------

    async def _delete_workloads(self, ws: Obj) -> list[str]:
        """Delete the workspace's workloads in the foreground (the workload stays until its pods
        are gone, so "gone" means stopped); returns those still there."""
        namespace, name = ws["metadata"]["namespace"], ws["metadata"]["name"]
        left = []
        for kind, store in (
            (kinds.DEPLOYMENT, self.s.deployments),
            (kinds.STATEFUL_SET, self.s.statefulsets),
            (kinds.JOB, self.s.jobs),
        ):
            obj = store.get(f"{namespace}/{name}")  # workloads are named after their workspace
            if obj is None or not is_controlled_by(obj, ws):
                continue
            if obj["metadata"].get("deletionTimestamp"):
                left.append(f"{kind.kind} {name}")
                continue
            try:
                await self.client.delete(kind, name, namespace=namespace, propagation_policy="Foreground")
            except NotFound:
                continue
            except Forbidden as err:
                # RBAC older than this code: do not hold the deletion hostage; garbage collection
                # removes the workload once the workspace is gone, as it did before.
                log.warning(
                    "cannot stop the workload first",
                    extra={"workspace": f"{namespace}/{name}", "error": str(err)},
                )
                continue
            left.append(f"{kind.kind} {name}")
        return left

    async def _finalize(self, ws: Obj) -> Result | None:
        if not has_finalizer(ws, FINALIZER):
            return None
        # Read live, not from the cache: a claim created by the pass just before the deletion
        # may not have reached the informer yet, and removing the finalizer then leaks it (and
        # its GPU node) for good. One list per pass of a deleting workspace is cheap.
        claims = [] if self.byo else await self.live_claims_of(ws)
        if not claims:
            with contextlib.suppress(NotFound):  # gone already: nothing left to hold back
                await remove_finalizer(self.client, self.kind, ws, FINALIZER)
            return None
        # The model stops before its nodes go: drained pods of a live workload would only be
        # replaced by pods with no node to run on, retried by the scheduler for nothing.
        workloads = await self._delete_workloads(ws)
        if workloads:
            reason, message = (
                "StoppingWorkload",
                f"stopping the model ({', '.join(workloads)}) before its nodes",
            )
        else:
            reason = "DeletingNodeClaims"
            message = f"waiting for {len(claims)} node claim(s) and their nodes to be deleted"
        status = thaw(ws.get("status") or {})
        status["conditions"] = set_condition(
            status.get("conditions"),
            st.WORKSPACE_DELETING,
            "True",
            reason=reason,
            message=message,
            now=datetime.now(UTC),
            observed_generation=ws["metadata"].get("generation"),
        )
        self.latest.remember((await patch_status(self.client, self.kind, ws, status))[0])
        if not workloads:
            for c in claims:
                if not (c["metadata"]).get("deletionTimestamp"):
                    with contextlib.suppress(NotFound):
                        await self.client.delete(NODECLAIM, c["metadata"]["name"])
        return Result(requeue_after=5.0)  # workload and claim deletions also wake us up


def keys_to_requests(keys: Iterable[str]) -> list[Request]:
    out = []
    for k in keys:
        ns, _, name = k.partition("/")
        out.append(Request(ns, name))
    return out
