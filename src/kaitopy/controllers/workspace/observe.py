"""Observe: what one pass of the Workspace reconciler looks at, gathered into plain data.

The caches give the nodes, claims, workloads and pods; the few things no cache holds are read
here too, so that `decide` stays pure: the inference ConfigMap's context (the plan is sized for
it), the ConfigMap each workload mounts (Kaito's default template, copied into the workspace's
namespace where missing: the one write of this step, idempotent), and, for a deleting
workspace, its NodeClaims as the API server has them. The events of a pod that `decide` asked
about come from a cache of the kubelet's pod events."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kaitopy.api.defaultconfigs import tuning_template
from kaitopy.api.nodeclaim import NODECLAIM
from kaitopy.controllers.workspace import adapterdelivery, workload
from kaitopy.controllers.workspace.defaultconfigs import resolve_config
from kaitopy.controllers.workspace.inferenceconfig import configured_max_model_len
from kaitopy.controllers.workspace.plan import (
    WORKSPACE_LABEL,
    WORKSPACE_NAMESPACE_LABEL,
    AdapterPlan,
    PlanError,
    Planner,
    Settings,
    WorkspacePlan,
)
from kaitopy.controllers.workspace.planner import parse_workspace
from kaitopy.runtime import Client, Kind, kinds
from kaitopy.runtime.cache.store import Store
from kaitopy.runtime.controller.reconcile import reconcile_logger
from kaitopy.runtime.objects import Obj, freeze
from kaitopy.runtime.seen import FirstSeen

CLAIMS_BY_WORKSPACE = "by-workspace"
PODS_BY_WORKSPACE = "by-workspace"
NODES_BY_WORKSPACE = "by-workspace"
SHARED_NODES = ""
"""The node index's key for nodes no workspace was provisioned (the user's own, shared by every
workspace whose selector matches them)."""
POD_EVENT = Kind("", "v1", "Event", "events")
"""The kubelet's events about pods: core/v1, which can be field-selected by source."""
KUBELET_POD_EVENTS = "involvedObject.kind=Pod,source=kubelet"
"""The events `decide` reads (pulls, mounts, sandboxes, probes): the kubelet's, about pods. They
are watched into a cache rather than listed per pod: the API server keeps no watch cache for
events, so each list by pod uid read every event of the namespace from etcd, and one per
workspace start-up made a 1,000-workspace start-up quadratic on the API server."""
EVENTS_BY_POD = "by-pod-uid"
EVENT_MESSAGE_CHARS = 1024
"""A cached event's message is cut to this (the reasons and the start of a message are what a
condition quotes); it bounds the cache's memory per event."""
log = reconcile_logger(__name__)


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
    pod_events: Store
    """The kubelet's events about pods (`KUBELET_POD_EVENTS`, trimmed), indexed by the pod's uid."""


@dataclass(frozen=True)
class Observed:
    """Everything `decide` needs about one (live) workspace, as plain data."""

    plan: WorkspacePlan | None
    """The workspace planned for the context its config asks for, with the ConfigMaps settled;
    None when it cannot be planned (`plan_error` says why)."""
    plan_error: PlanError | None = None
    nodes: tuple[Obj, ...] = ()
    """The cache's nodes (trimmed) the workspace may use: those provisioned for it and those
    provisioned for no workspace; `decide` picks among them."""
    claims: tuple[Obj, ...] = ()
    """The workspace's NodeClaims in the cache, by name."""
    deployment: Obj | None = None
    statefulset: Obj | None = None
    services: Mapping[str, Obj] = field(default_factory=dict)
    """The model's Services in the cache (the Service and, multi-node, the headless one), by name."""
    job: Obj | None = None
    pods: tuple[Obj, ...] = ()
    """The workload's pods (all revisions)."""
    pod_ages: Mapping[str, float] = field(default_factory=dict)
    """Seconds this controller has seen each pod, by uid, on its own clock (`runtime.seen.FirstSeen`):
    never the pod's creationTimestamp against the local clock."""
    pod_events: Mapping[str, tuple[Obj, ...]] = field(default_factory=dict)
    """Events by pod uid, read only for the pods `decide` asked about (`Decision.wants_events`)."""
    desired_adapters: tuple[AdapterPlan, ...] = ()
    """The Workspace's adapters now. `plan.inference.adapters` may be the running template's
    instead (`adapterdelivery.pinned`: an adapter edit alone is hot-loaded, not rolled out)."""
    adapter_answers: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)
    """Each live model pod's GET /adapters answer, by pod name (None: it did not answer)."""


@dataclass(frozen=True)
class Dying:
    """What the finalizer of a deleting workspace looks at."""

    claims: tuple[Obj, ...]
    """Read live, not from the cache: a claim created by the pass just before the deletion may
    not have reached the informer yet, and removing the finalizer then leaks it (and its GPU
    node) for good."""
    workloads: tuple[tuple[Kind, Obj], ...]
    """The cached Deployment, StatefulSet and Job named after the workspace."""


def workspace_key_of_labels(obj: Obj, default_namespace: str | None = None) -> list[str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    name = labels.get(WORKSPACE_LABEL)
    ns = (
        labels.get(WORKSPACE_NAMESPACE_LABEL)
        or default_namespace
        or (obj.get("metadata") or {}).get("namespace")
    )
    return [f"{ns}/{name}"] if name and ns else []


def pod_uid_of_event(event: Obj) -> list[str]:
    uid = (event.get("involvedObject") or {}).get("uid")
    return [str(uid)] if uid else []


_EVENT_FIELDS = ("involvedObject", "reason", "type", "count", "firstTimestamp", "lastTimestamp", "eventTime")


def trim_pod_event(event: Obj) -> Obj:
    """What `decide` reads of an event (status.events_problem, timeline.pull_seconds), no more:
    the cache holds every kubelet pod event of the cluster for the hour events live."""
    meta = event.get("metadata") or {}
    trimmed: dict[str, Any] = {k: event[k] for k in _EVENT_FIELDS if k in event}
    trimmed["metadata"] = {
        k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta
    }
    trimmed["message"] = str(event.get("message") or "")[:EVENT_MESSAGE_CHARS]
    result: Obj = freeze(trimmed)
    return result


def node_owner_key(node: Obj) -> list[str]:
    """The node index: the workspace a node was provisioned for, else `SHARED_NODES`. A reconcile
    then looks at its own nodes and the shared ones, not at every node of the cluster (a scan of
    all nodes in every reconcile made a 1,000-workspace start-up quadratic)."""
    return workspace_key_of_labels(node) or [SHARED_NODES]


class Observer:
    def __init__(
        self,
        client: Client,
        stores: Stores,
        planner: Planner,
        settings: Settings,
        adapter_reader: adapterdelivery.AdapterReader | None = None,
        first_seen: FirstSeen | None = None,
    ) -> None:
        self.client = client
        self.s = stores
        self.planner = planner
        self.settings = settings
        self.adapter_reader = adapter_reader or adapterdelivery.HttpAdapterReader()
        self.first_seen = first_seen or FirstSeen()

    def claims_of(self, ws: Obj) -> tuple[Obj, ...]:
        key = f"{ws['metadata']['namespace']}/{ws['metadata']['name']}"
        return tuple(
            sorted(self.s.claims.by_index(CLAIMS_BY_WORKSPACE, key), key=lambda c: c["metadata"]["name"])
        )

    async def observe(self, ws: Obj) -> Observed:
        try:
            # Sized for the context the webhook admitted: the inference config's, if it sets one.
            context = await configured_max_model_len(self.client, ws, self.settings.operator_namespace)
            plan = self.planner(parse_workspace(ws), max_model_len=context)
        except PlanError as err:
            return Observed(plan=None, plan_error=err)
        plan = await self._with_default_configs(ws, plan)
        namespace, name = str(ws["metadata"]["namespace"]), str(ws["metadata"]["name"])
        key = f"{namespace}/{name}"  # the workloads are named after their workspace
        services = {}
        if plan.inference is not None:
            for svc in (plan.inference.name, workload.headless_name(plan.inference)):
                found = self.s.services.get(f"{namespace}/{svc}")
                if found is not None:
                    services[svc] = found
        deployment = self.s.deployments.get(key)
        pods = tuple(self.s.pods.by_index(PODS_BY_WORKSPACE, key))
        desired: tuple[AdapterPlan, ...] = ()
        answers: dict[str, Mapping[str, Any] | None] = {}
        if plan.inference is not None:
            desired = plan.inference.adapters
            inference = adapterdelivery.pinned(plan.inference, deployment)
            plan = dataclasses.replace(plan, inference=inference)
            answers = await adapterdelivery.read_answers(self.adapter_reader, inference, desired, pods)
        return Observed(
            plan=plan,
            nodes=(
                *self.s.nodes.by_index(NODES_BY_WORKSPACE, key),
                *self.s.nodes.by_index(NODES_BY_WORKSPACE, SHARED_NODES),
            ),
            claims=self.claims_of(ws),
            deployment=deployment,
            statefulset=self.s.statefulsets.get(key),
            services=services,
            job=self.s.jobs.get(key),
            pods=pods,
            pod_ages=self.first_seen.ages(key, (str(p["metadata"]["uid"]) for p in pods)),
            desired_adapters=desired,
            adapter_answers=answers,
        )

    async def with_events(self, observed: Observed, pods: Iterable[Obj]) -> Observed:
        """`observed` plus the events of `pods` (those not read yet)."""
        events = dict(observed.pod_events)
        for pod in pods:
            uid = str(pod["metadata"]["uid"])
            if uid not in events:
                events[uid] = tuple(self._pod_events(pod))
        return dataclasses.replace(observed, pod_events=events)

    async def dying(self, ws: Obj, *, byo: bool) -> Dying:
        meta = ws["metadata"]
        claims: tuple[Obj, ...] = ()
        if not byo:
            found = await self.client.list(
                NODECLAIM,
                label_selector=f"{WORKSPACE_LABEL}={meta['name']},{WORKSPACE_NAMESPACE_LABEL}={meta['namespace']}",
            )
            claims = tuple(sorted(found.items, key=lambda c: str(c["metadata"]["name"])))
        key = f"{meta['namespace']}/{meta['name']}"
        workloads = tuple(
            (kind, obj)
            for kind, store in (
                (kinds.DEPLOYMENT, self.s.deployments),
                (kinds.STATEFUL_SET, self.s.statefulsets),
                (kinds.JOB, self.s.jobs),
            )
            if (obj := store.get(key)) is not None
        )
        return Dying(claims, workloads)

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

    def _pod_events(self, pod: Obj) -> list[Obj]:
        """The kubelet's events about one pod (its pulls, mounts, probes), from the events cache."""
        return self.s.pod_events.by_index(EVENTS_BY_POD, str(pod["metadata"]["uid"]))
