"""The built-in autoscaler under generated load, with the operator as its users run it (kwok nodes):
an InferenceSet at one member gets a bounded load; the members' model servers are simulated on
loopback (tests/support/simmembers.py: fixed slots and service time, so the queue their /metrics
report is the real backlog of the generated requests), read by the controller through
--inferenceset-metrics-url. The set scales 1 -> 3, every new member takes traffic, and once the load
stops it returns to 1: the surplus Workspaces, their NodeClaims and their nodes are deleted. Every
request gets a 200: none lost, none 5xx. The same on real nodes with the real model server is
tests/e2e/test_local_autoscale.py."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from kubernetes_asyncio.client.api_client import ApiClient

from kaitopy.controllers.inferenceset.autoscale import PREFIX
from kaitopy.runtime import Client, Kind, kinds
from tests.e2e.operator import Operator
from tests.e2e.test_inferenceset import INFERENCESET, NODECLAIM, WORKSPACE, phi3_set, wait_ready
from tests.support.cluster import Cluster
from tests.support.loadgen import Load
from tests.support.simmembers import simulated_members
from tests.support.wait import eventually

pytestmark = pytest.mark.e2e
EVENT = Kind("events.k8s.io", "v1", "Event", "events")
SET = "busy"


def ready(ws: dict[str, Any]) -> bool:
    return "deletionTimestamp" not in ws["metadata"] and any(
        c.get("type") == "InferenceReady" and c.get("status") == "True"
        for c in (ws.get("status") or {}).get("conditions") or []
    )


async def notes(client: Client, namespace: str, reason: str) -> list[str]:
    return [e["note"] for e in (await client.list(EVENT, namespace)).items if e["reason"] == reason]


async def test_load_scales_a_set_from_one_to_three_and_back_on_kwok(
    operator: Operator, kube_cluster: Cluster, api_client: ApiClient, namespace: str
) -> None:
    client = Client(api_client)
    async with simulated_members(slots=1, service_s=0.3) as sim:
        operator.start_provisioner()
        operator.start_controller(
            "--inferenceset-autoscale-interval=1", f"--inferenceset-metrics-url={sim.metrics_url_template()}"
        )
        body = phi3_set(SET, namespace, 1)
        body["metadata"]["annotations"] = {
            PREFIX + "enabled": "true",
            PREFIX + "min-replicas": "1",
            PREFIX + "max-replicas": "3",
            PREFIX + "target-queue-depth": "1",
            PREFIX + "target-running": "1",
            PREFIX + "scale-up-stabilization": "0",
            PREFIX + "scale-down-stabilization": "3",
        }
        kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
        await wait_ready(client, SET, namespace, 1)

        members: dict[str, str] = {}  # ready member -> its simulated server

        async def refresh() -> dict[str, str]:
            members.clear()
            for ws in (await client.list(WORKSPACE, namespace)).items:
                if ready(ws):
                    members[ws["metadata"]["name"]] = sim.url(namespace, ws["metadata"]["name"])
            return members

        (first,) = await refresh()
        # One slot of 0.3 s per member and 6 clients: one member holds 5 waiting and 1 running.
        load = Load(
            lambda: list(members.values()),
            {"model": "phi-3-mini-4k-instruct", "messages": [{"role": "user", "content": "hi"}]},
            concurrency=6,
            max_requests=1500,
            deadline_s=150,
        )
        started = time.monotonic()
        running = asyncio.create_task(load.run())
        try:
            await eventually(
                lambda: client.get(INFERENCESET, SET, namespace=namespace),
                until=lambda s: s["spec"]["replicas"] == 3,
                timeout=30,
                what="the autoscaler to ask for 3 members",
            )
            decided = time.monotonic() - started
            await eventually(refresh, until=lambda m: len(m) == 3, timeout=120, what="3 ready members")
            all_ready = time.monotonic() - started
            await eventually(
                lambda: asyncio.sleep(0.3),
                until=lambda _: all(sim.answered[f"{namespace}/{m}"] >= 5 for m in members),
                timeout=60,
                what="every member to answer some of the load",
            )
            # Still under load (a queue of about one per member): the set holds its three members.
            await asyncio.sleep(3)
            assert (await client.get(INFERENCESET, SET, namespace=namespace))["spec"]["replicas"] == 3
        finally:
            load.stop.set()
            result = await running
        stopped = time.monotonic()
        assert result.errors == [], result.errors[:5]
        assert dict(result.statuses) == {200: result.sent}, result.statuses
        ups = await notes(client, namespace, "AutoscaleUp")
        assert ups and ups[0].startswith("scale up 1 -> 3: queue "), ups
        extra = {m: (await client.get(WORKSPACE, m, namespace=namespace))["status"]["workerNodes"][0]
                 for m in members if m != first}  # fmt: skip

        # The load is gone: back to one member; the others, their claims and their nodes are deleted.
        await eventually(
            lambda: client.get(INFERENCESET, SET, namespace=namespace),
            until=lambda s: s["spec"]["replicas"] == 1,
            timeout=60,
            what="the set back to one member",
        )
        back = time.monotonic() - stopped
        downs = await notes(client, namespace, "AutoscaleDown")
        assert downs[0].startswith("scale down 3 -> 2: queue 0 and running 0 on 3 members"), downs
        await eventually(
            lambda: client.list(WORKSPACE, namespace),
            until=lambda ws: [w["metadata"]["name"] for w in ws.items] == [first],
            timeout=120,
            what=f"only {first} left",
        )
        await eventually(
            lambda: client.list(NODECLAIM, label_selector=f"kaito.sh/workspacenamespace={namespace}"),
            until=lambda c: len(c.items) == 1,
            timeout=120,
            what="the surplus members' node claims deleted",
        )
        for member, node in extra.items():
            await eventually(
                lambda node=node: client.get_or_none(kinds.NODE, node),  # type: ignore[misc]
                until=lambda n: n is None,
                timeout=60,
                what=f"{member}'s node {node} deleted",
            )
        per_member = {m: sim.answered[f"{namespace}/{m}"] for m in sorted({first, *extra})}
        print(
            f"autoscale 1 -> 3 -> 1 on kwok: {result.sent} requests, all 200, per member {per_member}; "
            f"scale-up asked {decided:.1f}s after the load started, 3 members ready after {all_ready:.1f}s; "
            f"back to 1 member {back:.1f}s after the load stopped"
        )
