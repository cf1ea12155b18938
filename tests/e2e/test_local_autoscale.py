"""The built-in autoscaler under generated load on real nodes (the `local` provider, the small CPU
preset): an InferenceSet at one member gets a bounded load from 4 concurrent clients; the queue its
model server reports makes the controller scale it to 2 (a second NodeClaim, node and pod), the new
member takes traffic, and once the load stops the set returns to 1 and the extra node leaves the
machine. Every request gets a 200: none lost, none 5xx. Prints the reaction times for README. Uses
machine-wide resources (local nodes): run it alone, as the other local-node tests."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio.client.api_client import ApiClient

from kaitopy.controllers.inferenceset.autoscale import PREFIX
from kaitopy.runtime import Client
from tests.e2e.conftest import start_local_model_operator
from tests.e2e.operator import Operator
from tests.e2e.test_inferenceset import INFERENCESET, WORKSPACE
from tests.support import localnodes
from tests.support.cluster import Cluster
from tests.support.loadgen import Load
from tests.support.wait import eventually

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "inference" / "kaitopy_workspace_smollm2_local.yaml"
PRESET = "smollm2-135m-instruct"
SET = "busy"


def autoscaled_set(namespace: str) -> dict[str, Any]:
    ws = yaml.safe_load(EXAMPLE.read_text())
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "InferenceSet",
        "metadata": {
            "name": SET,
            "namespace": namespace,
            "annotations": {
                PREFIX + "enabled": "true",
                PREFIX + "min-replicas": "1",
                PREFIX + "max-replicas": "2",
                PREFIX + "target-queue-depth": "1",
                # Running requests count too: with two members the queue empties while both are busy.
                PREFIX + "target-running": "1",
                PREFIX + "scale-up-stabilization": "0",
                PREFIX + "scale-down-stabilization": "10",
            },
        },
        "spec": {
            "replicas": 1,
            "labelSelector": ws["resource"]["labelSelector"],
            "template": {
                "resource": {"instanceType": ws["resource"]["instanceType"]},
                "inference": ws["inference"],
            },
        },
    }


def ready(ws: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "InferenceReady" and c.get("status") == "True"
        for c in (ws.get("status") or {}).get("conditions") or []
    )


async def test_load_scales_a_set_from_one_to_two_real_nodes_and_back(
    operator: Operator,
    kube_cluster: Cluster,
    model_images: localnodes.LocalImages,
    smollm2_weights: localnodes.Weights,
    tmp_path: Path,
    api_client: ApiClient,
    namespace: str,
) -> None:
    _, local_dir = start_local_model_operator(
        operator, kube_cluster, model_images, smollm2_weights, tmp_path, "--inferenceset-autoscale-interval=3"
    )
    client = Client(api_client)
    k = kube_cluster.kubectl
    members: dict[str, str] = {}  # ready member -> its Service's URL (by cluster IP: no DNS here)

    async def takes_connections(ip: str) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(ip, 80), 5)
        except (OSError, TimeoutError):
            return False
        writer.close()
        await writer.wait_closed()
        return True

    async def refresh() -> list[dict[str, Any]]:
        found = (await client.list(WORKSPACE, namespace)).items
        for ws in found:
            name = ws["metadata"]["name"]
            if ready(ws) and name not in members and "deletionTimestamp" not in ws["metadata"]:
                ip = k("get", "service", name, "-n", namespace, "-o", "jsonpath={.spec.clusterIP}").strip()
                # The load uses a member once its Service takes connections: the node's proxy
                # rules follow the member's readiness a moment later (seconds on a loaded machine).
                if await takes_connections(ip):
                    members[name] = f"http://{ip}"
        return found

    k("apply", "-f", "-", input=json.dumps(autoscaled_set(namespace)))
    try:
        await eventually(
            refresh, until=lambda _: len(members) == 1, timeout=420, what="the first member ready"
        )
        (first,) = members
        question = [{"role": "user", "content": "Write a short poem about the sea."}]
        load = Load(
            lambda: list(members.values()),
            {"model": PRESET, "messages": question, "max_tokens": 24, "temperature": 0},
            concurrency=4,
            max_requests=400,
            deadline_s=420,
        )
        started = time.monotonic()
        running = asyncio.create_task(load.run())
        try:
            await eventually(
                lambda: client.get(INFERENCESET, SET, namespace=namespace),
                until=lambda s: s["spec"]["replicas"] == 2,
                timeout=120,
                what="the autoscaler to ask for a second member",
            )
            decided = time.monotonic() - started
            await eventually(
                refresh, until=lambda _: len(members) == 2, timeout=420, what="the second member ready"
            )
            second_ready = time.monotonic() - started
            (second,) = set(members) - {first}
            url = members[second]
            await eventually(
                lambda: asyncio.sleep(0.5), until=lambda _: load.result.by_target[url] >= 3, timeout=240,
                what="the new member to answer some of the load",
            )  # fmt: skip
            # Still under load: the set holds both members.
            held = await client.get(INFERENCESET, SET, namespace=namespace)
            assert held["spec"]["replicas"] == 2, held["spec"]
        finally:
            load.stop.set()
            result = await running
        stopped = time.monotonic()
        assert result.errors == [], result.errors[:5]
        assert dict(result.statuses) == {200: result.sent}, result.statuses
        events = k(
            "get", "events", "-n", namespace, "--field-selector", "reason=AutoscaleUp",
            "-o", "jsonpath={.items[*].message}",
        )  # fmt: skip
        assert "scale up 1 -> 2" in events, events

        # The load is gone: back to one member, and the extra member's node leaves the machine.
        second_ws = await client.get(WORKSPACE, second, namespace=namespace)
        (node_name,) = second_ws["status"]["workerNodes"]
        record = json.loads((local_dir / "nodes" / node_name / "node.json").read_text())
        print(f"the second member {second} runs on node {node_name} (index {record['index']})")
        await eventually(
            lambda: client.get(INFERENCESET, SET, namespace=namespace),
            until=lambda s: s["spec"]["replicas"] == 1,
            timeout=120,
            what="the set back to one member",
        )
        back = time.monotonic() - stopped
        localnodes.wait(
            "the extra node gone", lambda: "NotFound" in k("get", "node", node_name, check=False), 300
        )
        assert (
            localnodes.leftovers(local_dir / "nodes" / node_name, node_name, f"kpbr{record['index']}") == []
        )
        # The newer member went, the first one serves on. The Node goes before the member's
        # Workspace does (its finalizer waits for the NodeClaim's, which waits for the Node).
        await eventually(
            lambda: client.list(WORKSPACE, namespace),
            until=lambda ws: [w["metadata"]["name"] for w in ws.items] == [first],
            timeout=120,
            what=f"only {first} left",
        )
        print(
            f"autoscale 1 -> 2 -> 1 on real nodes: {result.sent} requests, all 200 "
            f"({result.by_target[url]} answered by the new member); scale-up asked "
            f"{decided:.1f}s after the load started, second member ready after {second_ready:.1f}s; "
            f"back to 1 member {back:.1f}s after the load stopped"
        )
    finally:
        k("delete", "inferenceset", SET, "-n", namespace, "--ignore-not-found", "--wait=false", check=False)
        localnodes.wait(
            "the members gone",
            lambda: not k("get", "workspace", "-n", namespace, "-o", "name", check=False).strip(),
            timeout=300,
        )
