"""Namespace-scoped mode end to end: the real workspace controller, authenticated as the shipped
kaitopy-controller ServiceAccount with the chart's namespace-scoped RBAC (watchNamespaces), syncs
its caches and reconciles the Workspace in its namespace, and never sees the one outside it."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kaitopy.api import WORKSPACE
from kaitopy.controllers.workspace.plan import Settings
from kaitopy.controllers.workspace.planner import make_planner
from kaitopy.controllers.workspace.setup import wire
from kaitopy.presets import Catalog
from kaitopy.runtime import Client, Manager, ManagerSettings
from tests.integration.controllers.test_workspace_metrics import workspace
from tests.integration.test_rbac import applied, helm_template  # noqa: F401  (fixture)
from tests.support.cluster import Cluster
from tests.support.wait import eventually

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def two_namespaces(kube_cluster: Cluster) -> Iterator[tuple[str, str]]:
    suffix = uuid.uuid4().hex[:8]
    inside, outside = f"t-in-{suffix}", f"t-out-{suffix}"
    for ns in (inside, outside):
        kube_cluster.kubectl("create", "namespace", ns)
    yield inside, outside
    for ns in (inside, outside):
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false")


def service_account_kubeconfig(cluster: Cluster, path: Path) -> Path:
    """A kubeconfig that authenticates as kaito-system/kaitopy-controller (a bound token)."""
    token = cluster.kubectl("create", "token", "kaitopy-controller", "-n", "kaito-system").strip()
    admin: dict[str, Any] = yaml.safe_load(cluster.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"][:1],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": admin["clusters"][0]["name"], "user": "sa"}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
async def scoped_controller(
    kube_cluster: Cluster,
    applied: Any,  # noqa: F811  (the fixture imported above)
    two_namespaces: tuple[str, str],
    tmp_path: Path,
) -> AsyncIterator[Client]:
    inside, _ = two_namespaces
    applied(helm_template(f"watchNamespaces={{{inside}}}", "nodeProvisioner=byo"))
    client = await Client.from_kubeconfig(str(service_account_kubeconfig(kube_cluster, tmp_path / "sa")))
    async with client:
        settings = Settings(node_provisioner="byo")
        base = ManagerSettings(probe_host="127.0.0.1", probe_port=0, handle_signals=False)
        mgr = Manager(client, dataclasses.replace(base, namespaces=(inside,)))
        wire(mgr, client, make_planner(Catalog.load(), settings), settings, WORKSPACE, resync_period=None)
        task = asyncio.create_task(mgr.run())
        # Cache sync needs list/watch on every kind: a Forbidden anywhere would never sync.
        await asyncio.wait_for(mgr.wait_running(), 60)
        try:
            yield client
        finally:
            mgr.stop()
            await asyncio.wait_for(task, 30)


async def test_controller_reconciles_only_in_its_namespaces(
    kube_cluster: Cluster, scoped_controller: Client, two_namespaces: tuple[str, str]
) -> None:
    inside, outside = two_namespaces
    admin = await Client.from_kubeconfig(str(kube_cluster.kubeconfig))
    async with admin:
        for ns in (outside, inside):  # the outside one first: had it been seen, it would be done first
            await admin.create(WORKSPACE, workspace("ws", ns, "phi-3-mini-4k-instruct"))

        async def status_of(ns: str) -> dict[str, Any]:
            return dict((await admin.get(WORKSPACE, "ws", ns)).get("status") or {})

        await eventually(
            lambda: status_of(inside),
            until=lambda s: bool(s.get("conditions")),
            timeout=60,
            what="reconciled",
        )
        ws = await admin.get(WORKSPACE, "ws", inside)
        assert ws["metadata"].get("finalizers"), "the controller added its finalizer inside"
        untouched = await admin.get(WORKSPACE, "ws", outside)
        assert not untouched.get("status") and not untouched["metadata"].get("finalizers")
        # Cleanup while the controller runs, so it removes its finalizer.
        await admin.delete(WORKSPACE, "ws", inside)
        await admin.delete(WORKSPACE, "ws", outside)
        await eventually(
            lambda: admin.get_or_none(WORKSPACE, "ws", inside),
            until=lambda o: o is None,
            timeout=60,
            what="gone",
        )
