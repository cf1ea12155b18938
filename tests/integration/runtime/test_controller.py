"""A controller owning Deployments, under a Manager, against the real API server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from kaitopy.runtime import (
    Client,
    ControllerSettings,
    Kind,
    Manager,
    ManagerSettings,
    Request,
    Result,
    TerminalError,
    is_true,
    kinds,
)
from tests.support.wait import eventually

from .conftest import widget
from .widget_controller import add_widget_controller


@contextlib.asynccontextmanager
async def running(mgr: Manager) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(mgr.run())
    try:
        await asyncio.wait_for(mgr.wait_running(), 30)
        yield task
    finally:
        mgr.stop()
        await asyncio.wait_for(task, 30)


def idle(mgr: Manager) -> bool:
    return all(len(c.queue) == 0 and c.queue.processing == 0 for c in mgr.controllers)


async def test_owned_deployments_status_and_probes(client: Client, namespace: str, widget_crd: Kind) -> None:
    mgr = Manager(client, ManagerSettings(probe_port=0, handle_signals=False))
    add_widget_controller(mgr, client, widget_crd, namespace)
    await client.create(widget_crd, widget("w1", namespace, size=2))
    async with running(mgr):
        dep = await eventually(
            lambda: client.get(kinds.DEPLOYMENT, "w1", namespace), timeout=30, what="deployment w1"
        )
        assert dep["spec"]["replicas"] == 2
        ref = dep["metadata"]["ownerReferences"][0]
        assert (ref["kind"], ref["name"], ref["controller"], ref["blockOwnerDeletion"]) == (
            "Widget",
            "w1",
            True,
            True,
        )
        w = await eventually(
            lambda: client.get(widget_crd, "w1", namespace),
            until=lambda o: is_true((o.get("status") or {}).get("conditions"), "Ready"),
            timeout=30,
            what="Ready condition",
        )
        assert w["status"]["conditions"][0]["observedGeneration"] == w["metadata"]["generation"]

        # An edit of the owned object brings the owner back: the deployment is put right.
        await client.patch(kinds.DEPLOYMENT, "w1", {"spec": {"replicas": 5}}, namespace=namespace)
        await eventually(
            lambda: client.get(kinds.DEPLOYMENT, "w1", namespace),
            until=lambda d: d["spec"]["replicas"] == 2,
            timeout=30,
            what="replicas restored",
        )
        # Deleting the deployment recreates it.
        await client.delete(kinds.DEPLOYMENT, "w1", namespace)
        await eventually(
            lambda: client.get(kinds.DEPLOYMENT, "w1", namespace),
            until=lambda d: d["metadata"]["uid"] != dep["metadata"]["uid"],
            timeout=30,
            what="deployment recreated",
        )

        assert mgr.health is not None
        base = f"http://127.0.0.1:{mgr.health.port}"
        async with aiohttp.ClientSession() as http:
            for path in ("/healthz", "/readyz"):
                async with http.get(base + path) as resp:
                    assert resp.status == 200, path
            async with http.get(base + "/metrics") as resp:
                text = await resp.text()
        assert 'controller_runtime_reconcile_total{controller="widgets",result="success"}' in text
        assert 'workqueue_adds_total{controller="widgets",name="widgets"}' in text
        assert 'controller_runtime_max_concurrent_reconciles{controller="widgets"} 1.0' in text
        assert "rest_client_requests_total{" in text


async def test_steady_state_resync_writes_nothing(client: Client, namespace: str, widget_crd: Kind) -> None:
    n = 20
    mgr = Manager(client, ManagerSettings(probe_port=None, handle_signals=False))
    add_widget_controller(mgr, client, widget_crd, namespace)
    for i in range(n):
        await client.create(widget_crd, widget(f"w{i}", namespace, size=1))
    widgets = mgr.cache.store(widget_crd, namespace=namespace)

    async def all_ready() -> int:
        return sum(1 for w in widgets.list() if is_true((w.get("status") or {}).get("conditions"), "Ready"))

    async with running(mgr):
        await eventually(all_ready, until=lambda k: k == n, timeout=60, what="all widgets Ready")
        deployments = mgr.cache.store(kinds.DEPLOYMENT, namespace=namespace)
        await eventually(
            lambda: asyncio.sleep(0, len(deployments)), until=lambda k: k == n, what="deployments cached"
        )
        await eventually(lambda: asyncio.sleep(0, idle(mgr)), what="controller idle")
        ctrl = mgr.controllers[0]
        reconciles = (
            mgr.metrics.registry.get_sample_value(
                "controller_runtime_reconcile_total", {"controller": "widgets", "result": "success"}
            )
            or 0
        )
        writes_before = client.metrics.requests() - client.metrics.requests(method="GET")

        assert ctrl.requeue_all() == n  # a resync: every widget reconciled again, nothing changed
        await eventually(
            lambda: asyncio.sleep(
                0,
                mgr.metrics.registry.get_sample_value(
                    "controller_runtime_reconcile_total", {"controller": "widgets", "result": "success"}
                ),
            ),
            until=lambda v: v is not None and v >= reconciles + n,
            what="resync reconciles",
        )
        await eventually(lambda: asyncio.sleep(0, idle(mgr)), what="controller idle after resync")
        writes_after = client.metrics.requests() - client.metrics.requests(method="GET")
        assert writes_after - writes_before == 0


async def test_errors_retry_terminal_errors_do_not_and_requeue_after(client: Client, namespace: str) -> None:
    mgr = Manager(client, ManagerSettings(probe_port=None, handle_signals=False))
    calls: dict[str, int] = {}

    async def reconcile(req: Request) -> Result | None:
        calls[req.name] = calls.get(req.name, 0) + 1
        if req.name == "flaky" and calls[req.name] < 3:
            raise RuntimeError("transient")
        if req.name == "broken":
            raise TerminalError("never works")
        if req.name == "poll" and calls[req.name] < 3:
            return Result(requeue_after=0.05)
        return None

    (
        mgr.controller("retries")
        .for_(kinds.CONFIG_MAP, namespace=namespace)
        .with_settings(ControllerSettings(max_concurrent_reconciles=3))
        .build(reconcile)
    )
    for name in ("flaky", "broken", "poll"):
        await client.create(kinds.CONFIG_MAP, {"metadata": {"name": name, "namespace": namespace}})
    async with running(mgr):
        await eventually(
            lambda: asyncio.sleep(0, dict(calls)),
            until=lambda c: c.get("flaky") == 3 and c.get("poll") == 3 and c.get("broken") == 1,
            timeout=30,
            what="retries",
        )
        await eventually(lambda: asyncio.sleep(0, idle(mgr)), what="idle")
        assert calls["broken"] == 1
        reg = mgr.metrics.registry
        assert (
            reg.get_sample_value("controller_runtime_reconcile_errors_total", {"controller": "retries"}) == 3
        )
        assert (
            reg.get_sample_value(
                "controller_runtime_terminal_reconcile_errors_total", {"controller": "retries"}
            )
            == 1
        )
        assert (
            reg.get_sample_value(
                "controller_runtime_reconcile_total", {"controller": "retries", "result": "requeue_after"}
            )
            == 2
        )


@pytest.mark.parametrize("workers", [4])
async def test_one_object_is_never_reconciled_concurrently(
    client: Client, namespace: str, workers: int
) -> None:
    mgr = Manager(client, ManagerSettings(probe_port=None, handle_signals=False))
    in_flight: set[str] = set()
    overlaps: list[str] = []
    max_parallel = 0
    count = 0

    async def reconcile(req: Request) -> Result | None:
        nonlocal max_parallel, count
        if req.name in in_flight:
            overlaps.append(req.name)
        in_flight.add(req.name)
        max_parallel = max(max_parallel, len(in_flight))
        await asyncio.sleep(0.05)  # hold the object while events for it keep arriving
        in_flight.discard(req.name)
        count += 1
        return None

    (
        mgr.controller("exclusive")
        .for_(kinds.CONFIG_MAP, namespace=namespace)
        .with_settings(ControllerSettings(max_concurrent_reconciles=workers))
        .build(reconcile)
    )
    async with running(mgr):
        for i in range(4):
            await client.create(kinds.CONFIG_MAP, {"metadata": {"name": f"c{i}", "namespace": namespace}})
        for j in range(5):
            for i in range(4):
                await client.patch(kinds.CONFIG_MAP, f"c{i}", {"data": {"j": str(j)}}, namespace=namespace)
        await eventually(lambda: asyncio.sleep(0, idle(mgr) and count >= 4), what="idle")
    assert overlaps == []
    assert max_parallel > 1  # different objects did run in parallel
