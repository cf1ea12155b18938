"""The workspace gauges on the controller's /metrics endpoint, with the real controller (in
bring-your-own-nodes mode, so nothing else has to run) reconciling real workspaces."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kaitopy.api import WORKSPACE
from kaitopy.controllers.workspace.crds import ensure_workspace_crd
from kaitopy.controllers.workspace.plan import Settings
from kaitopy.controllers.workspace.planner import make_planner
from kaitopy.controllers.workspace.setup import wire
from kaitopy.presets import Catalog
from kaitopy.provisioner.install import ensure_crds
from kaitopy.runtime import Client, Manager, ManagerSettings
from kaitopy.runtime.kinds import NAMESPACE
from tests.support.cluster import Cluster
from tests.support.wait import eventually

HOLD = "kaitopy.test/hold"


@pytest.fixture
async def controller(kube_cluster: Cluster) -> AsyncIterator[tuple[Client, int]]:
    client = await Client.from_kubeconfig(str(kube_cluster.kubeconfig))
    async with client:
        await ensure_workspace_crd(client)
        await ensure_crds(client)  # as the operator installs them (byo mode itself watches no NodeClaims)
        settings = Settings(node_provisioner="byo")
        mgr = Manager(client, ManagerSettings(probe_host="127.0.0.1", probe_port=0, handle_signals=False))
        wire(mgr, client, make_planner(Catalog.load(), settings), settings, WORKSPACE, resync_period=None)
        task = asyncio.create_task(mgr.run())
        await asyncio.wait_for(mgr.wait_running(), 30)
        assert mgr.health is not None
        try:
            yield client, mgr.health.port
        finally:
            mgr.stop()
            await asyncio.wait_for(task, 30)


async def scrape(port: int) -> dict[str, dict[str, float]]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("kaitopy_workspace"):
            out[family.name] = {next(iter(s.labels.values())): s.value for s in family.samples}
    return out


async def steady_workspaces(client: Client) -> int | None:
    """How many workspaces the cluster holds, or None while some are on their way out.

    Earlier tests delete their namespaces without waiting; the namespace controller removes their
    workspaces later, so a count taken meanwhile would change under this test."""
    terminating = {
        ns["metadata"]["name"]
        for ns in (await client.list(NAMESPACE)).items
        if ns.get("status", {}).get("phase") == "Terminating"
    }
    items = (await client.list(WORKSPACE)).items
    if any(
        ws["metadata"].get("deletionTimestamp") or ws["metadata"]["namespace"] in terminating for ws in items
    ):
        return None
    return len(items)


async def settled(client: Client, port: int, timeout: float = 120) -> dict[str, dict[str, float]]:
    """The gauges once no workspace is leaving the cluster, they count every workspace it holds,
    and two scrapes a second apart agree."""
    deadline = asyncio.get_running_loop().time() + timeout
    last = await scrape(port)
    while True:
        await asyncio.sleep(1.0)
        now = await scrape(port)
        held = await steady_workspaces(client)
        total = sum(now.get("kaitopy_workspace_count", {}).values())
        if now == last and held is not None and total == held:
            return now
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"the workspace gauges did not settle in {timeout:.0f}s: {now}; the cluster holds {held}"
            )
        last = now


def workspace(
    name: str, namespace: str, preset: str, *, finalizers: list[str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": namespace, "finalizers": finalizers or []},
        "resource": {
            "instanceType": "Standard_NC24ads_A100_v4",
            "labelSelector": {"matchLabels": {"m": name}},
        },
        "inference": {"preset": {"name": preset}},
    }


async def test_workspace_gauges_on_the_metrics_endpoint(
    controller: tuple[Client, int], namespace: str
) -> None:
    client, port = controller
    # The informer is cluster-wide: count relative to what other tests left behind, once it has
    # settled (this controller finishes deleting workspaces other tests' controllers left behind).
    before = await settled(client, port)
    base = before["kaitopy_workspace_count"]
    base_presets = before.get("kaitopy_workspace_preset_count", {})
    assert set(base) == {"pending", "provisioning", "ready", "succeeded", "failed", "deleting"}

    await client.create(WORKSPACE, workspace("nodes", namespace, "phi-4"))
    await client.create(WORKSPACE, workspace("nodes2", namespace, "phi-4"))
    await client.create(WORKSPACE, workspace("bad", namespace, "no-such-model-9b"))
    await client.create(WORKSPACE, workspace("leaving", namespace, "mistral-7b", finalizers=[HOLD]))
    # The test's own finalizer holds "leaving"; release it whatever happens, or it blocks its namespace.
    try:

        def expect(state: str, delta: int) -> float:
            return base.get(state, 0.0) + delta

        # byo mode, no matching node: NodesNotFound (provisioning); an unknown preset: failed.
        await eventually(
            lambda: scrape(port),
            until=lambda m: (
                m["kaitopy_workspace_count"]["provisioning"] == expect("provisioning", 3)
                and m["kaitopy_workspace_count"]["failed"] == expect("failed", 1)
            ),
            timeout=30,
            what="provisioning +3 and failed +1",
        )
        presets = (await scrape(port))["kaitopy_workspace_preset_count"]
        assert presets["phi-4"] == base_presets.get("phi-4", 0.0) + 2
        assert presets["no-such-model-9b"] == base_presets.get("no-such-model-9b", 0.0) + 1

        await client.delete(WORKSPACE, "leaving", namespace=namespace)
        await eventually(
            lambda: scrape(port),
            until=lambda m: (
                m["kaitopy_workspace_count"]["deleting"] == expect("deleting", 1)
                and m["kaitopy_workspace_count"]["provisioning"] == expect("provisioning", 2)
            ),
            timeout=30,
            what="deleting +1",
        )
    finally:
        with contextlib.suppress(Exception):
            await client.patch(WORKSPACE, "leaving", {"metadata": {"finalizers": None}}, namespace=namespace)
