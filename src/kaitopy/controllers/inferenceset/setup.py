"""Registering the InferenceSet controller on a manager. It shares the manager's Workspace
informer (the Workspace controller's too) and indexes it by the set label."""

from __future__ import annotations

from collections.abc import Iterable

from kaitopy.api.constants import INFERENCESET, WORKSPACE
from kaitopy.controllers.inferenceset.metrics import InferenceSetLoadCollector
from kaitopy.controllers.inferenceset.reconciler import (
    MEMBERS_BY_SET,
    InferenceSetReconciler,
    set_key_of_member,
)
from kaitopy.runtime import ControllerSettings, EventRecorder, Manager, Request
from kaitopy.runtime.client import Client
from kaitopy.runtime.objects import Obj

COMPONENT = "kaitopy-inferenceset"


def member_requests(ws: Obj) -> Iterable[Request]:
    for key in set_key_of_member(ws):
        namespace, _, name = key.partition("/")
        yield Request(namespace, name)


def wire(mgr: Manager, client: Client, *, max_concurrent_reconciles: int = 4) -> InferenceSetReconciler:
    workspaces = mgr.cache.informer(WORKSPACE)
    workspaces.add_indexer(MEMBERS_BY_SET, set_key_of_member)
    recorder = EventRecorder(client, COMPONENT)
    mgr.add_shutdown_hook(recorder.flush)
    reconciler = InferenceSetReconciler(
        client, mgr.cache.informer(INFERENCESET).store, workspaces.store, recorder
    )
    mgr.metrics.registry.register(InferenceSetLoadCollector(reconciler.load))
    (
        mgr.controller("inferenceset")
        .for_(INFERENCESET)
        .watches(WORKSPACE, member_requests)
        .with_settings(ControllerSettings(max_concurrent_reconciles=max_concurrent_reconciles))
        .build(reconciler.reconcile)
    )
    return reconciler
