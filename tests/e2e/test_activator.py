"""Scale from zero through node provisioning, with the operator as its users run it (kwok nodes):
the controller and provisioner processes under their shipped RBAC, and the activator (in the test's
process, on loopback) under its own shipped ServiceAccount. A request to a set at zero wakes it; the
set makes a member Workspace, the Workspace a NodeClaim, the provisioner a node, the pod becomes
ready, and the held request is answered. Idle, the set goes back to zero and its Workspace,
NodeClaim and node are deleted. (kwok pods run nothing, so the member's model server is a loopback
server the activator is pointed at: discovery and readiness are the real ones.)"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client.api_client import ApiClient

from kaitopy.activator.admission import HoldSettings
from kaitopy.controllers.inferenceset.autoscale import PREFIX
from kaitopy.runtime import Client, Kind, kinds
from tests.e2e.operator import KAITOPY, OPERATOR_NAMESPACE, Operator, Process, free_port
from tests.e2e.test_inferenceset import INFERENCESET, NODECLAIM, WORKSPACE, phi3_set
from tests.support.activator import model_server, running_activator
from tests.support.cluster import Cluster
from tests.support.wait import eventually

pytestmark = pytest.mark.e2e
EVENT = Kind("events.k8s.io", "v1", "Event", "events")


@pytest.fixture
def client(api_client: ApiClient) -> Client:
    return Client(api_client)


async def test_a_request_at_zero_provisions_a_node_is_answered_and_idle_returns_to_zero(
    operator: Operator,
    operator_identities: dict[str, Path],
    kube_cluster: Cluster,
    client: Client,
    namespace: str,
) -> None:
    operator.start_provisioner()
    operator.start_controller("--inferenceset-autoscale-interval=1")
    body: dict[str, Any] = phi3_set("phi", namespace, 0)
    body["metadata"]["annotations"] = {
        PREFIX + "enabled": "true",
        PREFIX + "min-replicas": "0",
        PREFIX + "max-replicas": "1",
        PREFIX + "idle-seconds": "4",
    }
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    await asyncio.sleep(3)  # the autoscaler has seen the set at zero and leaves it there
    assert (await client.get(INFERENCESET, "phi", namespace=namespace))["spec"]["replicas"] == 0

    # The controller made the set's front Service, pointing at the activator.
    front = await eventually(
        lambda: client.get(kinds.SERVICE, "phi", namespace=namespace),
        timeout=30,
        what="the set's front Service",
    )
    assert front["spec"]["externalName"] == f"kaitopy-activator.{OPERATOR_NAMESPACE}.svc.cluster.local"

    as_activator = await Client.from_kubeconfig(str(operator_identities["activator"]))
    async with (
        as_activator,
        model_server() as model,
        running_activator(
            as_activator,
            OPERATOR_NAMESPACE,
            lambda ns, member: model.url(),
            HoldSettings(max_queue=4, max_wait_s=240, retry_after_s=5),
        ) as act,
    ):
        # Six clients at once at zero: four are held (the queue bound) and answered once the member is
        # ready; two are refused at once with Retry-After. Nothing else: no request lost, no other 5xx.
        url = f"{act.url}/inferencesets/{namespace}/phi/v1/chat/completions"
        chat = {"model": "phi", "messages": [{"role": "user", "content": "hi"}]}

        async def ask(s: aiohttp.ClientSession) -> tuple[int, str | None, Any]:
            async with s.post(url, json=chat, timeout=aiohttp.ClientTimeout(total=300)) as resp:
                return resp.status, resp.headers.get("Retry-After"), await resp.json()

        t0 = time.monotonic()
        async with aiohttp.ClientSession() as s:
            answers = await asyncio.gather(*(ask(s) for _ in range(6)))
        ok = [a for a in answers if a[0] == 200]
        refused = [a for a in answers if a[0] != 200]
        assert len(ok) == 4 and all(a[2]["choices"][0]["message"]["content"] == "hello" for a in ok), answers
        assert [(a[0], a[1], a[2]["error"]["type"]) for a in refused] == [
            (503, "5", "ServiceUnavailableError")
        ] * 2
        waited = time.monotonic() - t0
        members = (await client.list(WORKSPACE, namespace)).items
        assert [w["metadata"]["name"] for w in members] == ["phi-0"]
        (node,) = members[0]["status"]["workerNodes"]
        claims = (
            await client.list(NODECLAIM, label_selector=f"kaito.sh/workspacenamespace={namespace}")
        ).items
        assert len(claims) == 1
        labels = {"namespace": namespace, "inferenceset": "phi"}
        assert act.sample("kaitopy_activator_wakes_total", **labels) == 1
        assert act.sample("kaitopy_activator_hold_seconds_count", **labels, outcome="forwarded") == 4
        assert act.sample("kaitopy_activator_rejected_requests_total", **labels, reason="queue_full") == 2
        print(f"requests at zero answered after {waited:.1f}s (kwok node)")

        # No more requests: after idle-seconds the set goes to zero, and its member, claim and node go.
        await eventually(
            lambda: client.get(INFERENCESET, "phi", namespace=namespace),
            until=lambda s: s["spec"]["replicas"] == 0,
            timeout=60,
            what="the idle set scaled to zero",
        )
        # The Event is written by the recorder's writers, just after the scale.
        downs = await eventually(
            lambda: client.list(EVENT, namespace),
            until=lambda evs: any(e["reason"] == "AutoscaleDown" for e in evs.items),
            timeout=10,
            what="the AutoscaleDown Event",
        )
        notes = [e["note"] for e in downs.items if e["reason"] == "AutoscaleDown"]
        assert len(notes) == 1 and notes[0].startswith("scale down 1 -> 0: no request for ")
        await eventually(
            lambda: client.list(WORKSPACE, namespace),
            until=lambda ws: not ws.items,
            timeout=120,
            what="the member workspace deleted",
        )
        await eventually(
            lambda: client.list(NODECLAIM, label_selector=f"kaito.sh/workspacenamespace={namespace}"),
            until=lambda c: not c.items,
            timeout=120,
            what="the member's node claim deleted",
        )
        await eventually(
            lambda: client.get_or_none(kinds.NODE, node),
            until=lambda n: n is None,
            timeout=60,
            what=f"node {node} deleted",
        )


async def test_the_activator_process_serves_as_shipped(
    operator_identities: dict[str, Path], tmp_path: Path, client: Client, namespace: str
) -> None:
    """`kaitopy activator` itself, as the shipped ServiceAccount: ready once its caches sync, the
    proxy answers (an unknown set: 404, OpenAI-shaped), its metrics are on the probe port, and a
    request for a sleeping set that does not scale from zero is refused."""
    port = free_port()
    env = {**os.environ, "KUBECONFIG": str(operator_identities["activator"]), "PYTHONUNBUFFERED": "1"}
    proc = Process(
        "activator",
        [*KAITOPY, "activator", f"--port={port}", "--host=127.0.0.1", "--max-queue=3"],
        env,
        tmp_path / "activator.log",
    )
    proc.start()
    try:
        await client.create(INFERENCESET, phi3_set("asleep", namespace, 0))
        async with aiohttp.ClientSession() as s:
            base = f"http://127.0.0.1:{port}/inferencesets/{namespace}"
            async with s.post(f"{base}/nope/v1/chat/completions", json={}) as resp:
                assert resp.status == 404
                assert (await resp.json())["error"]["message"] == f"InferenceSet {namespace}/nope not found"

            async def asleep() -> int:
                async with s.post(f"{base}/asleep/v1/chat/completions", json={}) as resp:
                    return resp.status

            assert (
                await eventually(asleep, until=lambda st: st == 503, timeout=30, what="the set in the cache")
                == 503
            )
        assert (
            proc.metric("kaitopy_activator_rejected_requests_total", namespace=namespace, reason="asleep")
            == 1
        )
    finally:
        assert proc.stop() == 0, proc.logs()
