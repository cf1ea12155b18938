"""Registering the InferenceSet controller on a manager. It shares the manager's Workspace
informer (the Workspace controller's too) and indexes it by the set label."""

from __future__ import annotations

from collections.abc import Iterable

from kaitopy.api.constants import INFERENCESET, WORKSPACE
from kaitopy.controllers.inferenceset import scrape
from kaitopy.controllers.inferenceset.front import FRONT_LABEL
from kaitopy.controllers.inferenceset.metrics import InferenceSetLoadCollector
from kaitopy.controllers.inferenceset.reconciler import (
    AUTOSCALE_INTERVAL_S,
    MEMBERS_BY_SET,
    InferenceSetReconciler,
    set_key_of_member,
)
from kaitopy.controllers.workspace.plan import WORKSPACE_LABEL
from kaitopy.runtime import ControllerSettings, EventRecorder, Manager, Request, kinds
from kaitopy.runtime.client import Client
from kaitopy.runtime.objects import Obj

COMPONENT = "kaitopy-inferenceset"


def member_requests(ws: Obj) -> Iterable[Request]:
    for key in set_key_of_member(ws):
        namespace, _, name = key.partition("/")
        yield Request(namespace, name)


def wire(
    mgr: Manager,
    client: Client,
    *,
    max_concurrent_reconciles: int = 4,
    operator_namespace: str | None = None,
    autoscale_interval_s: float = AUTOSCALE_INTERVAL_S,
    activator_host: str | None = None,
    metrics_url_template: str | None = None,
) -> InferenceSetReconciler:
    workspaces = mgr.cache.informer(WORKSPACE)
    workspaces.add_indexer(MEMBERS_BY_SET, set_key_of_member)
    recorder = EventRecorder(client, COMPONENT)
    mgr.add_shutdown_hook(recorder.close)
    reconciler = InferenceSetReconciler(
        client,
        mgr.cache.informer(INFERENCESET).store,
        workspaces.store,
        recorder,
        operator_namespace=operator_namespace,
        autoscale_interval_s=autoscale_interval_s,
        services=mgr.cache.informer(kinds.SERVICE, label_selector=FRONT_LABEL).store,
        activator_host=activator_host,
        # The members' Services: the same informer the workspace controller owns them through.
        metrics_url=scrape.template_url(metrics_url_template)
        if metrics_url_template
        else scrape.cluster_ip_url(mgr.cache.informer(kinds.SERVICE, label_selector=WORKSPACE_LABEL).store),
    )
    mgr.metrics.registry.register(InferenceSetLoadCollector(reconciler.load))
    (
        mgr.controller("inferenceset")
        .for_(INFERENCESET)
        .watches(WORKSPACE, member_requests)
        .watches(kinds.SERVICE, member_requests, label_selector=FRONT_LABEL)
        .with_settings(ControllerSettings(max_concurrent_reconciles=max_concurrent_reconciles))
        .build(reconciler.reconcile)
    )
    return reconciler
