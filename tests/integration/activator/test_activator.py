"""The activator against the real API server (its own informer caches), members' model servers on
127.0.0.1: a request at zero wakes the set through the scale subresource, is held and answered once a
member is ready (streamed); a full queue and a wait past its bound are 503s with Retry-After; a set at
zero that does not scale from zero is refused at once. And the idle clock: the autoscaler scales an
idle set to zero from the activator's Lease, and a fresh Lease keeps it up."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client.api_client import ApiClient

from kaitopy.activator.admission import HoldSettings
from kaitopy.api.constants import INFERENCESET
from kaitopy.controllers.inferenceset import activity
from kaitopy.controllers.inferenceset.autoscale import PREFIX
from kaitopy.controllers.inferenceset.front import FRONT_LABEL
from kaitopy.controllers.inferenceset.reconciler import InferenceSetReconciler
from kaitopy.controllers.workspace.crds import ensure_workspace_crd
from kaitopy.runtime import Client, EventRecorder, Kind, Request, Store, freeze, kinds
from tests.integration.controllers.test_inferenceset_reconcile import (
    inference_set,
    live_members,
    set_ready,
    snapshot,
)
from tests.support.activator import model_server, running_activator
from tests.support.registry import free_port
from tests.support.wait import eventually

pytestmark = pytest.mark.integration
EVENT = Kind("events.k8s.io", "v1", "Event", "events")
CHAT = {"model": "phi", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def client(api_client: ApiClient) -> Client:
    c = Client(api_client)
    await ensure_workspace_crd(c)
    return c


def scale_to_zero_set(name: str, namespace: str, replicas: int, idle: str = "900") -> dict[str, Any]:
    body = inference_set(name, namespace, replicas)
    body["metadata"]["annotations"] = {
        PREFIX + "enabled": "true",
        PREFIX + "min-replicas": "0",
        PREFIX + "max-replicas": "2",
        PREFIX + "idle-seconds": idle,
    }
    return body


async def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_a_request_at_zero_wakes_the_set_is_held_and_answered(client: Client, namespace: str) -> None:
    await client.create(INFERENCESET, scale_to_zero_set("s", namespace, 0))
    async with (
        model_server() as model,
        running_activator(
            client,
            namespace,  # the test's namespace stands in for the operator's
            lambda ns, member: model.url(),
            HoldSettings(max_queue=1, max_wait_s=60, retry_after_s=12),
        ) as act,
    ):
        url = f"{act.url}/inferencesets/{namespace}/s/v1/chat/completions"
        held = asyncio.create_task(post(url, {**CHAT, "stream": True}))
        woke = await eventually(
            lambda: client.get(INFERENCESET, "s", namespace=namespace),
            until=lambda s: s["spec"]["replicas"] == 1,
            timeout=20,
            what="the set woken to 1 replica",
        )
        assert woke["spec"]["replicas"] == 1
        assert act.sample("kaitopy_activator_held_requests", namespace=namespace, inferenceset="s") == 1

        # The queue (1) is full: the next request is refused at once, with when to come back.
        status, headers, body = await post(url, CHAT)
        assert status == 503
        assert headers["Retry-After"] == "12"
        assert b'"type": "ServiceUnavailableError"' in body and b"1 requests already wait" in body
        assert not held.done()

        # The set's controller makes its member; once it is ready the held request goes through.
        await InferenceSetReconciler(
            client, *await snapshot(client, namespace), EventRecorder(client, "t")
        ).reconcile(Request(namespace, "s"))
        assert await live_members(client, namespace) == ["s-0"]
        await asyncio.sleep(0.3)
        assert not held.done()  # created is not ready
        await set_ready(client, namespace, "s-0", True)
        status, _, body = await asyncio.wait_for(held, 20)
        assert status == 200
        assert body.count(b"data: ") == 3 and b'"content": "lo"' in body and body.endswith(b"[DONE]\n\n")
        assert model.seen == [{"path": "/v1/chat/completions", "body": {**CHAT, "stream": True}}]

        labels = {"namespace": namespace, "inferenceset": "s"}
        assert act.sample("kaitopy_activator_hold_seconds_count", **labels, outcome="forwarded") == 1
        assert act.sample("kaitopy_activator_hold_seconds_sum", **labels, outcome="forwarded") > 0.3
        assert act.sample("kaitopy_activator_rejected_requests_total", **labels, reason="queue_full") == 1
        assert act.sample("kaitopy_activator_wakes_total", **labels) == 1
        assert act.sample("kaitopy_activator_held_requests", **labels) == 0

        # With a ready member, requests are forwarded at once (also by the Host of the set's Service).
        status, _, body = await post(url, CHAT)
        assert (status, body.count(b"hello")) == (200, 1)
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{act.url}/v1/chat/completions",
                json=CHAT,
                headers={"Host": f"s.{namespace}.svc.cluster.local"},
            ) as resp,
        ):
            assert resp.status == 200

        lease = await client.get(kinds.LEASE, activity.lease_name(namespace, "s"), namespace=namespace)
        at = activity.last_request_at(lease)
        assert at is not None and time.time() - at < 10


async def test_a_sets_max_queue_lowers_the_activators_bound(client: Client, namespace: str) -> None:
    body = scale_to_zero_set("small", namespace, 0)
    body["metadata"]["annotations"][PREFIX + "max-queue"] = "1"
    await client.create(INFERENCESET, body)
    async with (
        model_server() as model,
        running_activator(
            client,
            namespace,
            lambda ns, m: model.url(),
            HoldSettings(max_queue=5, max_wait_s=2, retry_after_s=3),
        ) as act,
    ):
        url = f"{act.url}/inferencesets/{namespace}/small/v1/chat/completions"
        held = asyncio.create_task(post(url, CHAT))
        labels = {"namespace": namespace, "inferenceset": "small"}
        await eventually(
            lambda: asyncio.sleep(0.05),
            until=lambda _: act.sample("kaitopy_activator_held_requests", **labels) == 1,
            timeout=10,
            what="the first request held",
        )
        # The set's own bound (1), not the activator's (5): the second is refused at once.
        status, headers, refused = await post(url, CHAT)
        assert status == 503 and headers["Retry-After"] == "3"
        assert b"1 requests already wait" in refused
        assert act.sample("kaitopy_activator_rejected_requests_total", **labels, reason="queue_full") == 1
        assert (await held)[0] == 503  # no member ever gets ready here: the wait bound answers it


async def test_a_wait_past_its_bound_a_sleeping_set_and_a_huge_body_are_refused(
    client: Client, namespace: str
) -> None:
    await client.create(INFERENCESET, inference_set("starting", namespace, 1))  # a member never ready
    await client.create(INFERENCESET, inference_set("asleep", namespace, 0))  # zero, no scale from zero
    async with (
        model_server() as model,
        running_activator(
            client,
            namespace,
            lambda ns, m: model.url(),
            HoldSettings(max_queue=5, max_wait_s=0.5, retry_after_s=3),
        ) as act,
    ):
        t0 = time.monotonic()
        status, headers, body = await post(
            f"{act.url}/inferencesets/{namespace}/starting/v1/chat/completions", CHAT
        )
        assert status == 503 and headers["Retry-After"] == "3"
        assert b"had no ready member within 0.5s" in body
        assert time.monotonic() - t0 >= 0.5
        labels = {"namespace": namespace, "inferenceset": "starting"}
        assert act.sample("kaitopy_activator_rejected_requests_total", **labels, reason="wait_exceeded") == 1
        assert act.sample("kaitopy_activator_hold_seconds_count", **labels, outcome="wait_exceeded") == 1
        assert (await client.get(INFERENCESET, "starting", namespace=namespace))["spec"]["replicas"] == 1

        status, headers, body = await post(
            f"{act.url}/inferencesets/{namespace}/asleep/v1/chat/completions", CHAT
        )
        assert status == 503 and b"does not scale from zero" in body
        assert (await client.get(INFERENCESET, "asleep", namespace=namespace))["spec"]["replicas"] == 0

        status, _, body = await post(f"{act.url}/inferencesets/{namespace}/nope/v1/chat/completions", CHAT)
        assert status == 404 and b"not found" in body

    # A body over --max-body-bytes is refused before anything is woken.
    await client.create(INFERENCESET, scale_to_zero_set("big", namespace, 0))
    async with (
        model_server() as model,
        running_activator(
            client, namespace, lambda ns, m: model.url(), HoldSettings(), max_body_bytes=1000
        ) as act,
    ):
        huge = {**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
        status, _, _ = await post(f"{act.url}/inferencesets/{namespace}/big/v1/chat/completions", huge)
        assert status == 413
        assert (await client.get(INFERENCESET, "big", namespace=namespace))["spec"]["replicas"] == 0
        assert act.sample("kaitopy_activator_wakes_total", namespace=namespace, inferenceset="big") == 0
        assert model.seen == []
        # Only sets that scale to zero have an idle clock: no Lease for the others.
        for name in ("starting", "asleep"):
            assert (
                await client.get_or_none(kinds.LEASE, activity.lease_name(namespace, name), namespace) is None
            )


async def test_the_autoscaler_scales_an_idle_set_to_zero_by_the_activity_lease(
    client: Client, namespace: str
) -> None:
    await client.create(INFERENCESET, scale_to_zero_set("s", namespace, 1, idle="60"))
    clock = [2_000_000_000.0]
    req = Request(namespace, "s")

    stores = await snapshot(client, namespace)
    recorder = EventRecorder(client, "test")
    rec = InferenceSetReconciler(
        client,
        *stores,
        recorder,
        operator_namespace=namespace,
        wall=lambda: clock[0],
        metrics_url=lambda ns, m: "http://127.0.0.1:9/metrics",  # silent members: no load seen
    )

    async def run() -> dict[str, Any]:
        rec.sets, rec.workspaces = await snapshot(client, namespace)
        await rec.reconcile(req)
        await recorder.drain()  # its events are written by the recorder's writers, soon after
        got: dict[str, Any] = await client.get(INFERENCESET, "s", namespace=namespace)
        return got

    await run()  # creates s-0; first seen now: the idle clock starts
    await set_ready(client, namespace, "s-0", True)
    # A request 50 s ago at the activator (its Lease): not idle yet at +70 s.
    await client.create(kinds.LEASE, activity.lease_body(namespace, namespace, "s", clock[0] + 20))
    clock[0] += 70
    assert (await run())["spec"]["replicas"] == 1
    clock[0] += 15  # 65 s since that request
    assert (await run())["spec"]["replicas"] == 0
    notes = [e["note"] for e in (await client.list(EVENT, namespace)).items if e["reason"] == "AutoscaleDown"]
    assert notes == ["scale down 1 -> 0: no request for 65s (idle-seconds 60)"]
    await run()  # at zero: the member goes (and with it, through its finalizer, its nodes)
    assert await live_members(client, namespace) == []
    clock[0] += 10_000
    assert (await run())["spec"]["replicas"] == 0  # the autoscaler never leaves zero by itself


async def test_a_set_that_scales_to_zero_gets_a_front_service_and_never_takes_over_one(
    client: Client, namespace: str
) -> None:
    host = "kaitopy-activator.kaito-system.svc.cluster.local"
    await client.create(INFERENCESET, scale_to_zero_set("s", namespace, 0))
    await client.create(INFERENCESET, scale_to_zero_set("taken", namespace, 0))
    await client.create(INFERENCESET, inference_set("plain", namespace, 0))  # no scale to zero: no front
    theirs = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "taken", "namespace": namespace},
        "spec": {"ports": [{"port": 80}]},
    }
    await client.create(kinds.SERVICE, theirs)

    async def run(name: str) -> None:
        sets, workspaces = await snapshot(client, namespace)
        services = Store()
        for svc in (await client.list(kinds.SERVICE, namespace, label_selector=FRONT_LABEL)).items:
            services.upsert(freeze(svc))
        recorder = EventRecorder(client, "test")
        rec = InferenceSetReconciler(
            client, sets, workspaces, recorder, services=services, activator_host=host
        )
        await rec.reconcile(Request(namespace, name))
        await recorder.close()

    for name in ("s", "taken", "plain"):
        await run(name)
    await run("s")  # the second pass finds it as wanted and writes nothing
    got = await client.get(kinds.SERVICE, "s", namespace=namespace)
    assert got["spec"]["type"] == "ExternalName" and got["spec"]["externalName"] == host
    owner = await client.get(INFERENCESET, "s", namespace=namespace)
    assert [r["uid"] for r in got["metadata"]["ownerReferences"]] == [owner["metadata"]["uid"]]
    untouched = await client.get(kinds.SERVICE, "taken", namespace=namespace)
    assert untouched["spec"]["type"] == "ClusterIP" and not untouched["metadata"].get("ownerReferences")
    assert await client.get_or_none(kinds.SERVICE, "plain", namespace) is None
    events = (await client.list(EVENT, namespace)).items
    conflicts = [e["note"] for e in events if e["reason"] == "FrontServiceConflict"]
    assert conflicts == [
        "service taken exists and is not this set's: clients of the set call the activator at "
        f"/inferencesets/{namespace}/taken/ until it is renamed or deleted"
    ]
    assert [e["regarding"]["name"] for e in events if e["reason"] == "FrontServiceCreated"] == ["s"]


async def test_a_member_that_refuses_the_connection_at_first_is_tried_again_then_502(
    client: Client, namespace: str
) -> None:
    """A member just turned Ready whose Service does not take connections yet (on a real node: the
    node's proxy rules lag the EndpointSlice): the activator tries again and the request is
    answered, sent once. A member that never takes one is a 502 after --connect-retry."""
    await client.create(INFERENCESET, inference_set("s", namespace, 1))
    await InferenceSetReconciler(
        client, *await snapshot(client, namespace), EventRecorder(client, "t")
    ).reconcile(Request(namespace, "s"))
    await set_ready(client, namespace, "s-0", True)
    port = free_port()  # nothing listens there yet: connecting is refused
    async with running_activator(
        client,
        namespace,
        lambda ns, member: f"http://127.0.0.1:{port}",
        HoldSettings(max_wait_s=10, connect_retry_s=20),
    ) as act:
        url = f"{act.url}/inferencesets/{namespace}/s/v1/chat/completions"
        labels = {"namespace": namespace, "inferenceset": "s"}
        await eventually(
            lambda: asyncio.sleep(0.05),
            until=lambda _: act.activator.workspaces.get(f"{namespace}/s-0") is not None,
            timeout=10,
            what="the ready member in the activator's cache",
        )
        sent = asyncio.create_task(post(url, {**CHAT, "stream": True}))
        await eventually(
            lambda: asyncio.sleep(0.05),
            until=lambda _: act.sample("kaitopy_activator_connect_retries_total", **labels) >= 2,
            timeout=10,
            what="connections tried again",
        )
        assert not sent.done()
        async with model_server(port) as model:
            status, _, body = await asyncio.wait_for(sent, 10)
            assert status == 200 and body.endswith(b"[DONE]\n\n")
            assert len(model.seen) == 1  # sent once, however many connections were tried
        assert act.sample("kaitopy_activator_forwarded_requests_total", **labels, code="200") == 1
        assert act.sample("kaitopy_activator_forwarded_requests_total", **labels, code="0") == 0

    async with running_activator(
        client,
        namespace,
        lambda ns, member: f"http://127.0.0.1:{port}",  # closed again: nothing ever listens
        HoldSettings(max_wait_s=10, connect_retry_s=1),
    ) as act:
        t0 = time.monotonic()
        status, _, body = await post(f"{act.url}/inferencesets/{namespace}/s/v1/chat/completions", CHAT)
        assert status == 502, body
        assert b"did not accept the connection within 1s" in body and b'"BadGatewayError"' in body
        assert 0.5 <= time.monotonic() - t0 < 5
        assert act.sample("kaitopy_activator_forwarded_requests_total", **labels, code="0") == 1
        assert act.sample("kaitopy_activator_connect_retries_total", **labels) >= 2
