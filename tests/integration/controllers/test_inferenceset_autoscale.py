"""The built-in autoscaler and the exported load, end to end on the API side: members' /metrics
pages served on loopback (standing in for the model servers), the decision written through the
scale subresource, an Event with the numbers behind it, and the load on the controller's /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from kubernetes_asyncio.client.api_client import ApiClient
from prometheus_client import CollectorRegistry, generate_latest

from kaitopy.api.constants import INFERENCESET
from kaitopy.controllers.inferenceset.autoscale import PREFIX
from kaitopy.controllers.inferenceset.expectations import Expectations
from kaitopy.controllers.inferenceset.metrics import InferenceSetLoadCollector
from kaitopy.controllers.inferenceset.reconciler import InferenceSetReconciler
from kaitopy.controllers.workspace.crds import ensure_workspace_crd
from kaitopy.runtime import Client, EventRecorder, Kind, Request
from tests.integration.controllers.test_inferenceset_reconcile import inference_set, set_ready, snapshot

pytestmark = pytest.mark.integration
EVENT = Kind("events.k8s.io", "v1", "Event", "events")


@pytest.fixture
async def client(api_client: ApiClient) -> Client:
    c = Client(api_client)
    await ensure_workspace_crd(c)
    return c


@pytest.fixture
async def pages() -> AsyncIterator[tuple[dict[str, str], int]]:
    """member name -> its /metrics page, served on 127.0.0.1:<port>/<member>/metrics."""
    served: dict[str, str] = {}

    async def metrics(request: web.Request) -> web.Response:
        page = served.get(request.match_info["member"])
        return web.Response(text=page) if page is not None else web.Response(status=503)

    app = web.Application()
    app.router.add_get("/{member}/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield served, port
    finally:
        await runner.cleanup()


def page(queue: float, running: float) -> str:
    return f"kaitopy_inference_queue_depth {queue}\nkaitopy_inference_running_requests {running}\n"


async def test_queue_depth_scales_the_set_up_and_back_down_with_events(
    client: Client, namespace: str, pages: tuple[dict[str, str], int]
) -> None:
    served, port = pages
    body = inference_set("s", namespace, 2)
    body["metadata"]["annotations"] = {
        PREFIX + "enabled": "true",
        PREFIX + "max-replicas": "5",
        PREFIX + "target-queue-depth": "2",
        PREFIX + "scale-down-stabilization": "0",
    }
    await client.create(INFERENCESET, body)
    req = Request(namespace, "s")
    clock = [1000.0]

    async def run() -> None:
        rec.sets, rec.workspaces = await snapshot(client, namespace)
        await rec.reconcile(req)
        await recorder.drain()  # events are written by the recorder's writers, soon after

    sets, workspaces = await snapshot(client, namespace)
    recorder = EventRecorder(client, "test")
    rec = InferenceSetReconciler(
        client,
        sets,
        workspaces,
        recorder,
        expectations=Expectations(),
        monotonic=lambda: clock[0],
        metrics_url=lambda ns, member: f"http://127.0.0.1:{port}/{member}/metrics",
    )
    await run()  # creates s-0, s-1; they are not ready, so the autoscaler holds at 2
    assert (await client.get(INFERENCESET, "s", namespace=namespace))["spec"]["replicas"] == 2
    for name in ("s-0", "s-1"):
        await set_ready(client, namespace, name, True)
    served.update({"s-0": page(4, 1), "s-1": page(3, 1)})
    await run()
    got = await client.get(INFERENCESET, "s", namespace=namespace)
    assert got["spec"]["replicas"] == 4  # queue 7 over target 2 per member
    notes = [e["note"] for e in (await client.list(EVENT, namespace)).items if e["reason"] == "AutoscaleUp"]
    assert notes == ["scale up 2 -> 4: queue 7 and running 2 on 2 members; load asks for 4, bounds 1-5"]

    await run()  # creates s-2 and s-3; while they start, no decision to shrink
    for name in ("s-2", "s-3"):
        await set_ready(client, namespace, name, True)
    # The queue drains: one member fewer per decision (the default step).
    served.update({f"s-{i}": page(0, 0) for i in range(4)})
    clock[0] += 15
    await run()
    got = await client.get(INFERENCESET, "s", namespace=namespace)
    assert got["spec"]["replicas"] == 3
    downs = [e["note"] for e in (await client.list(EVENT, namespace)).items if e["reason"] == "AutoscaleDown"]
    assert downs == ["scale down 4 -> 3: queue 0 and running 0 on 4 members; load asks for 0, bounds 1-5"]


async def test_bad_settings_are_an_event_naming_the_annotation(client: Client, namespace: str) -> None:
    body = inference_set("s", namespace, 1)
    body["metadata"]["annotations"] = {PREFIX + "enabled": "true"}
    await client.create(INFERENCESET, body)
    sets, workspaces = await snapshot(client, namespace)
    recorder = EventRecorder(client, "test")
    await InferenceSetReconciler(client, sets, workspaces, recorder).reconcile(Request(namespace, "s"))
    await recorder.close()
    (event,) = [e for e in (await client.list(EVENT, namespace)).items if e["reason"] == "AutoscalerInvalid"]
    assert event["type"] == "Warning"
    assert event["note"].startswith(f"metadata.annotations[{PREFIX}max-replicas] is required")


async def test_export_metrics_alone_exports_the_load_and_never_scales(
    client: Client, namespace: str, pages: tuple[dict[str, str], int]
) -> None:
    served, port = pages
    body = inference_set("s", namespace, 2)
    body["metadata"]["annotations"] = {PREFIX + "export-metrics": "true"}
    await client.create(INFERENCESET, body)
    rec = InferenceSetReconciler(
        client,
        *(await snapshot(client, namespace)),
        EventRecorder(client, "test"),
        metrics_url=lambda ns, member: f"http://127.0.0.1:{port}/{member}/metrics",
    )
    await rec.reconcile(Request(namespace, "s"))
    for name in ("s-0", "s-1"):
        await set_ready(client, namespace, name, True)
    served.update({"s-0": page(5, 2), "s-1": page(4, 2)})  # the autoscaler would want 5 members
    rec.sets, rec.workspaces = await snapshot(client, namespace)
    result = await rec.reconcile(Request(namespace, "s"))
    assert result is not None and result.requeue_after == 15.0  # scraped again at the next interval
    assert (await client.get(INFERENCESET, "s", namespace=namespace))["spec"]["replicas"] == 2

    registry = CollectorRegistry()
    registry.register(InferenceSetLoadCollector(rec.load))
    text = generate_latest(registry).decode()
    labels = f'inferenceset="s",namespace="{namespace}"'
    assert f"kaitopy_inferenceset_queue_depth{{{labels}}} 9.0" in text
    assert f"kaitopy_inferenceset_running_requests{{{labels}}} 4.0" in text
    assert f"kaitopy_inferenceset_members_answering{{{labels}}} 2.0" in text


async def test_tokens_per_minute_scales_up_from_the_counters_rate_and_is_exported(
    client: Client, namespace: str, pages: tuple[dict[str, str], int]
) -> None:
    served, port = pages
    body = inference_set("s", namespace, 1)
    body["metadata"]["annotations"] = {
        PREFIX + "enabled": "true",
        PREFIX + "max-replicas": "4",
        PREFIX + "target-queue-depth": "0",
        PREFIX + "target-tokens-per-minute": "6000",
    }
    await client.create(INFERENCESET, body)
    req = Request(namespace, "s")
    clock = [1000.0]
    recorder = EventRecorder(client, "test")
    rec = InferenceSetReconciler(
        client,
        *(await snapshot(client, namespace)),
        recorder,
        monotonic=lambda: clock[0],
        metrics_url=lambda ns, member: f"http://127.0.0.1:{port}/{member}/metrics",
    )

    async def run(tokens: int) -> int:
        served["s-0"] = page(0, 1) + f'kaitopy_inference_completion_tokens_total{{model="m"}} {tokens}\n'
        rec.sets, rec.workspaces = await snapshot(client, namespace)
        await rec.reconcile(req)
        await recorder.drain()
        return int((await client.get(INFERENCESET, "s", namespace=namespace))["spec"]["replicas"])

    await rec.reconcile(req)  # creates s-0
    await set_ready(client, namespace, "s-0", True)
    assert await run(1000) == 1  # the first reading: no rate yet
    clock[0] += 15
    assert await run(5500) == 3  # 4,500 tokens in 15 s: 18,000 a minute over 6,000 per member
    (note,) = [e["note"] for e in (await client.list(EVENT, namespace)).items if e["reason"] == "AutoscaleUp"]
    assert note == (
        "scale up 1 -> 3: queue 0 and running 1, 18000 tokens/min on 1 members; load asks for 3, bounds 1-4"
    )
    registry = CollectorRegistry()
    registry.register(InferenceSetLoadCollector(rec.load))
    text = generate_latest(registry).decode()
    assert (
        f'kaitopy_inferenceset_tokens_per_minute{{inferenceset="s",namespace="{namespace}"}} 18000.0' in text
    )
