"""Registering the Workspace controller on a manager: its informers (label-filtered where the
objects are ours, so the cache holds only what it needs), indexes, and event mappings."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kaitopy.api.nodeclaim import NODECLAIM
from kaitopy.controllers.workspace import nodes as nodesel
from kaitopy.controllers.workspace.adapterdelivery import AdapterReader
from kaitopy.controllers.workspace.metrics import register_workspace_metrics, startup_metrics
from kaitopy.controllers.workspace.observe import (
    EVENTS_BY_POD,
    KUBELET_POD_EVENTS,
    POD_EVENT,
    pod_uid_of_event,
    trim_pod_event,
)
from kaitopy.controllers.workspace.plan import WORKSPACE_LABEL, Settings
from kaitopy.controllers.workspace.reconciler import (
    CLAIMS_BY_WORKSPACE,
    NODES_BY_WORKSPACE,
    PODS_BY_WORKSPACE,
    Planner,
    Stores,
    WorkspaceReconciler,
    keys_to_requests,
    node_owner_key,
    workspace_key_of_labels,
)
from kaitopy.runtime import (
    ControllerSettings,
    EventRecorder,
    Kind,
    Manager,
    Request,
    index_by_match_labels,
    kinds,
    trim_node,
)
from kaitopy.runtime.cache.store import Store
from kaitopy.runtime.client import Client
from kaitopy.runtime.objects import Obj

COMPONENT = "kaitopy-workspace"
WS_BY_SELECTOR = "by-node-selector"


def _selector_of(ws: Obj) -> tuple[dict[str, str], list[dict[str, object]]]:
    sel = ((ws.get("resource") or {}).get("labelSelector")) or {}
    return dict(sel.get("matchLabels") or {}), [dict(e) for e in sel.get("matchExpressions") or ()]


def node_mapper(workspaces: Store) -> Callable[[Obj], Iterable[Request]]:
    def map_node(node: Obj) -> Iterable[Request]:
        keys = workspace_key_of_labels(node)
        if keys:
            return keys_to_requests(keys)
        # A node nobody provisioned for a workspace (bring-your-own): every workspace it could serve.
        labels = (node.get("metadata") or {}).get("labels") or {}
        out = []
        for ws in workspaces.selecting(WS_BY_SELECTOR, labels):  # only those that may match
            match_labels, exprs = _selector_of(ws)
            if nodesel.matches(labels, match_labels, exprs):
                out.append(Request(ws["metadata"]["namespace"], ws["metadata"]["name"]))
        return out

    return map_node


def wire(
    mgr: Manager,
    client: Client,
    planner: Planner,
    settings: Settings,
    workspace_kind: Kind,
    *,
    max_concurrent_reconciles: int = 10,
    resync_period: float | None = 36000.0,
    adapter_reader: AdapterReader | None = None,
) -> WorkspaceReconciler:
    ws_store = mgr.cache.informer(workspace_kind).store
    ws_store.add_indexer(WS_BY_SELECTOR, index_by_match_labels(lambda ws: _selector_of(ws)[0]))
    register_workspace_metrics(mgr.metrics, ws_store)
    # With bring-your-own nodes the operator makes no NodeClaims, and the cluster may not even
    # serve the kind (or serve a real Karpenter's): keep the claims view empty instead of
    # watching a kind whose list would never sync.
    byo = settings.node_provisioner == "byo"
    if byo:
        claims_store = Store({CLAIMS_BY_WORKSPACE: workspace_key_of_labels})
    else:
        claims = mgr.cache.informer(NODECLAIM, label_selector=WORKSPACE_LABEL)
        claims.add_indexer(CLAIMS_BY_WORKSPACE, workspace_key_of_labels)
        claims_store = claims.store
    pods = mgr.cache.informer(kinds.POD, label_selector=WORKSPACE_LABEL)
    pods.add_indexer(PODS_BY_WORKSPACE, workspace_key_of_labels)
    events = mgr.cache.informer(POD_EVENT, field_selector=KUBELET_POD_EVENTS, transform=trim_pod_event)
    events.add_indexer(EVENTS_BY_POD, pod_uid_of_event)
    owned = {
        k: mgr.cache.informer(k, label_selector=WORKSPACE_LABEL).store
        for k in (kinds.DEPLOYMENT, kinds.STATEFUL_SET, kinds.SERVICE, kinds.JOB)
    }
    nodes = mgr.cache.informer(kinds.NODE, transform=trim_node)
    nodes.add_indexer(NODES_BY_WORKSPACE, node_owner_key)
    stores = Stores(
        workspaces=ws_store,
        nodes=nodes.store,
        claims=claims_store,
        deployments=owned[kinds.DEPLOYMENT],
        statefulsets=owned[kinds.STATEFUL_SET],
        services=owned[kinds.SERVICE],
        jobs=owned[kinds.JOB],
        pods=pods.store,
        pod_events=events.store,
    )
    recorder = EventRecorder(client, COMPONENT)
    mgr.add_shutdown_hook(recorder.close)
    reconciler = WorkspaceReconciler(
        client,
        stores,
        planner,
        recorder,
        settings,
        workspace_kind,
        startup=startup_metrics(mgr.metrics),
        adapter_reader=adapter_reader,
    )
    builder = mgr.controller("workspace").for_(workspace_kind)
    for k in owned:
        builder = builder.owns(k, label_selector=WORKSPACE_LABEL)
    if not byo:
        builder = builder.watches(
            NODECLAIM,
            lambda o: keys_to_requests(workspace_key_of_labels(o)),
            label_selector=WORKSPACE_LABEL,
        )
    (
        builder.watches(
            kinds.POD, lambda o: keys_to_requests(workspace_key_of_labels(o)), label_selector=WORKSPACE_LABEL
        )
        .watches(kinds.NODE, node_mapper(ws_store))
        .with_settings(
            ControllerSettings(
                max_concurrent_reconciles=max_concurrent_reconciles, resync_period=resync_period
            )
        )
        .build(reconciler.reconcile)
    )
    return reconciler
