"""A workspace reconciler over caches the test fills by hand, against the real API server: what
the informers would hold is whatever the test has `sync`ed, so a write the reconciler made but
the informer has not seen yet (cache lag) is the default, and races are reproduced on purpose."""

from __future__ import annotations

from dataclasses import dataclass

from kaitopy.api import WORKSPACE
from kaitopy.controllers.workspace.observe import EVENTS_BY_POD, pod_uid_of_event
from kaitopy.controllers.workspace.plan import Settings
from kaitopy.controllers.workspace.planner import make_planner
from kaitopy.controllers.workspace.reconciler import (
    CLAIMS_BY_WORKSPACE,
    NODES_BY_WORKSPACE,
    PODS_BY_WORKSPACE,
    Stores,
    WorkspaceReconciler,
    node_owner_key,
    workspace_key_of_labels,
)
from kaitopy.presets import Catalog
from kaitopy.runtime import Client, EventRecorder, Kind, Request, Result
from kaitopy.runtime.cache.store import Store


@dataclass
class LaggingController:
    client: Client
    stores: Stores
    reconciler: WorkspaceReconciler

    async def sync(self, kind: Kind, store: Store, namespace: str | None = None) -> None:
        """Let the informer for `kind` catch up with the API server (a full relist)."""
        store.replace((await self.client.list(kind, namespace)).items, namespace)

    async def reconcile(self, namespace: str, name: str) -> Result | None:
        # The workspace itself is always read fresh: the lag under test is in the other caches.
        await self.sync(WORKSPACE, self.stores.workspaces, namespace)
        return await self.reconciler.reconcile(Request(namespace, name))


def lagging_controller(client: Client, settings: Settings | None = None) -> LaggingController:
    settings = settings or Settings()
    stores = Stores(
        workspaces=Store(),
        nodes=Store({NODES_BY_WORKSPACE: node_owner_key}),
        claims=Store({CLAIMS_BY_WORKSPACE: workspace_key_of_labels}),
        deployments=Store(),
        statefulsets=Store(),
        services=Store(),
        jobs=Store(),
        pods=Store({PODS_BY_WORKSPACE: workspace_key_of_labels}),
        pod_events=Store({EVENTS_BY_POD: pod_uid_of_event}),
    )
    reconciler = WorkspaceReconciler(
        client,
        stores,
        make_planner(Catalog.load(), settings),
        EventRecorder(client, "kaitopy-test"),
        settings,
        WORKSPACE,
    )
    return LaggingController(client, stores, reconciler)
