"""The NodeClaim lifecycle end to end on the real control plane, once with the kwok provider and
once with the azure provider against the ARM-shaped server: claim -> Node -> Ready, drain and
delete, delete mid-launch, restart mid-launch, terminal quota failure, garbage collection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client.api_client import ApiClient

from kaitopy.provisioner.cloudprovider import NODECLAIM_LABEL, LaunchRequest, Taint
from kaitopy.provisioner.install import ensure_crds
from kaitopy.provisioner.lifecycle import NODECLAIM
from kaitopy.provisioner.nodeclaim import LAUNCH_TOKEN_ANNOTATION, TERMINATION_FINALIZER
from kaitopy.provisioner.settings import ProvisionerSettings
from kaitopy.runtime import Client, Kind, NotFound, kinds
from tests.integration.provisioner.harness import (
    A100,
    QUOTA_LESS,
    Cloud,
    claim_name,
    cloud,
    condition,
    nodeclaim,
    start,
)
from tests.support.cluster import Cluster
from tests.support.wait import eventually

FAST = ProvisionerSettings(poll_interval_s=0.3, gc_interval_s=3600, gc_grace_s=3600)
EVENT = Kind("events.k8s.io", "v1", "Event", "events")
PDB = Kind("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets")


@pytest.fixture(params=["kwok", "azure"])
async def cloud_env(
    request: pytest.FixtureRequest, api_client: ApiClient, tmp_path: Path
) -> AsyncIterator[Cloud]:
    async with cloud(request.param, Client(api_client), tmp_path, launch_delay_s=2.0) as c:
        yield c


async def claim_nodes(client: Client, name: str) -> list[dict[str, Any]]:
    return list((await client.list(kinds.NODE, label_selector=f"{NODECLAIM_LABEL}={name}")).items)


async def wait_ready(client: Client, name: str, timeout: float = 90) -> dict[str, Any]:
    claim: dict[str, Any] = await eventually(
        lambda: client.get(NODECLAIM, name),
        until=lambda c: condition(c, "Ready").get("status") == "True",
        timeout=timeout,
        what=f"nodeclaim {name} Ready",
    )
    return claim


async def wait_claim_gone(client: Client, name: str, timeout: float = 90) -> None:
    await eventually(
        lambda: client.get_or_none(NODECLAIM, name),
        until=lambda c: c is None,
        timeout=timeout,
        what=f"nodeclaim {name} deleted",
    )


async def events_for(client: Client, name: str) -> list[dict[str, Any]]:
    events = await client.list(EVENT, namespace="default")
    return [e for e in events.items if (e.get("regarding") or {}).get("name") == name]


async def test_claim_becomes_a_registered_ready_gpu_node(cloud_env: Cloud, kube_cluster: Cluster) -> None:
    client = cloud_env.client
    running = await start(client, cloud_env.provider(), FAST)
    name = claim_name()
    try:
        await client.create(NODECLAIM, nodeclaim(name))
        claim = await wait_ready(client, name)
        assert TERMINATION_FINALIZER in claim["metadata"]["finalizers"]
        for type_ in ("Launched", "Registered", "Initialized"):
            assert condition(claim, type_)["status"] == "True", condition(claim, type_)
        status = claim["status"]
        prefix = "kwok://" if cloud_env.kind == "kwok" else "azure:///subscriptions/"
        assert status["providerID"].startswith(prefix)
        assert status["capacity"]["nvidia.com/gpu"] == "1"
        assert status["allocatable"]["nvidia.com/gpu"] == "1"
        node = await client.get(kinds.NODE, status["nodeName"])
        labels = node["metadata"]["labels"]
        assert labels["kaito.sh/workspace"] == "phi"
        assert labels[NODECLAIM_LABEL] == name
        assert labels["karpenter.sh/registered"] == "true"
        assert labels["karpenter.sh/initialized"] == "true"
        assert labels["node.kubernetes.io/instance-type"] == A100
        taints = {(t["key"], t["effect"]) for t in node["spec"].get("taints") or ()}
        assert ("sku", "NoSchedule") in taints
        assert ("karpenter.sh/unregistered", "NoExecute") not in taints
        owners = node["metadata"]["ownerReferences"]
        assert [(o["kind"], o["name"]) for o in owners] == [("NodeClaim", name)]
        # Events are written by the recorder's writers just after the reconcile that recorded them.
        await eventually(
            lambda: events_for(client, name),
            until=lambda evs: (
                {"Launching", "Launched", "Registered", "Initialized"} <= {e["reason"] for e in evs}
            ),
            timeout=10,
            what="the claim's lifecycle events",
        )
        header, row = kube_cluster.kubectl("get", "nodeclaims", name).splitlines()
        assert header.split() == ["NAME", "TYPE", "CAPACITY", "ZONE", "NODE", "READY", "AGE"]
        cells = row.split()
        assert cells[:2] == [name, A100] and status["nodeName"] in cells and "True" in cells
    finally:
        await client.delete(NODECLAIM, name)
        await wait_claim_gone(client, name)
        await running.stop()
    assert await claim_nodes(client, name) == []
    assert name not in await cloud_env.instances()


async def test_deletion_drains_through_pdbs_then_removes_instance_and_node(
    cloud_env: Cloud, namespace: str
) -> None:
    client = cloud_env.client
    running = await start(client, cloud_env.provider(), FAST)
    name = claim_name()
    try:
        await client.create(NODECLAIM, nodeclaim(name))
        node_name = (await wait_ready(client, name))["status"]["nodeName"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "model", "namespace": namespace, "labels": {"app": "model"}},
            "spec": {
                "nodeName": node_name,
                "tolerations": [{"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
                "containers": [{"name": "m", "image": "registry.invalid/model:1"}],
            },
        }
        await client.create(kinds.POD, pod)
        await eventually(
            lambda: client.get(kinds.POD, "model", namespace=namespace),
            until=lambda p: (p.get("status") or {}).get("phase") == "Running",
            timeout=30,
            what="pod running on the GPU node",
        )
        pdb = {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "model", "namespace": namespace},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "model"}}},
        }
        await client.create(PDB, pdb)
        await eventually(
            lambda: client.get(PDB, "model", namespace=namespace),
            until=lambda p: (p.get("status") or {}).get("observedGeneration") == 1,
            timeout=30,
            what="PDB observed",
        )
        await client.delete(NODECLAIM, name)
        blocked = await eventually(
            lambda: events_for(client, name),
            until=lambda evs: any(e["reason"] == "DisruptionBlocked" for e in evs),
            timeout=30,
            what="eviction blocked by the PDB",
        )
        assert any(f"{namespace}/model" in e["note"] for e in blocked if e["reason"] == "DisruptionBlocked")
        claim = await client.get(NODECLAIM, name)
        assert condition(claim, "InstanceTerminating")["reason"] == "Draining"
        node = await client.get(kinds.NODE, node_name)
        assert node["spec"].get("unschedulable") is True  # cordoned while it waits
        assert name in await cloud_env.instances()  # the instance outlives the drain

        await client.delete(PDB, "model", namespace=namespace)
        await wait_claim_gone(client, name)
        assert await client.get_or_none(kinds.POD, "model", namespace=namespace) is None
        assert await client.get_or_none(kinds.NODE, node_name) is None
        assert name not in await cloud_env.instances()
    finally:
        await running.stop()


async def test_claim_deleted_mid_launch_leaks_nothing(cloud_env: Cloud) -> None:
    client = cloud_env.client
    running = await start(client, cloud_env.provider(), FAST)
    name = claim_name()
    try:
        await client.create(NODECLAIM, nodeclaim(name))
        await eventually(
            lambda: client.get(NODECLAIM, name),
            until=lambda c: LAUNCH_TOKEN_ANNOTATION in (c["metadata"].get("annotations") or {}),
            timeout=30,
            what="launch started",
        )
        await client.delete(NODECLAIM, name)
        await wait_claim_gone(client, name)
        # Past the time the launch would have taken: nothing may turn up late.
        await asyncio.sleep(cloud_env.launch_delay_s + 1.0)
        assert name not in await cloud_env.instances()
        assert await claim_nodes(client, name) == []
    finally:
        await running.stop()


async def test_restart_mid_launch_resumes_without_a_second_instance(cloud_env: Cloud) -> None:
    client = cloud_env.client
    first = await start(client, cloud_env.provider(), FAST)
    name = claim_name()
    second = None
    try:
        await client.create(NODECLAIM, nodeclaim(name))
        claim = await eventually(
            lambda: client.get(NODECLAIM, name),
            until=lambda c: LAUNCH_TOKEN_ANNOTATION in (c["metadata"].get("annotations") or {}),
            timeout=30,
            what="launch started",
        )
        token = claim["metadata"]["annotations"][LAUNCH_TOKEN_ANNOTATION]
        await first.kill()
        assert condition(await client.get(NODECLAIM, name), "Ready").get("status") != "True"
        second = await start(client, cloud_env.provider(), FAST)
        claim = await wait_ready(client, name)
        assert claim["metadata"]["annotations"][LAUNCH_TOKEN_ANNOTATION] == token
        assert len(await claim_nodes(client, name)) == 1
        if cloud_env.arm is not None:
            assert cloud_env.creations(name) == 1
            assert cloud_env.arm.requests[("PUT", name)] == 1
    finally:
        await client.delete(NODECLAIM, name)
        await wait_claim_gone(client, name)
        if second is not None:
            await second.stop()
    assert name not in await cloud_env.instances()


async def test_quota_failure_is_terminal_with_a_clear_reason(cloud_env: Cloud) -> None:
    client = cloud_env.client
    provider = cloud_env.provider()
    calls: list[str] = []
    begin = provider.begin_launch

    async def counting_begin(request: LaunchRequest) -> str:
        calls.append(request.claim_name)
        return await begin(request)

    provider.begin_launch = counting_begin  # type: ignore[method-assign]
    running = await start(client, provider, FAST)
    name = claim_name()
    try:
        await client.create(NODECLAIM, nodeclaim(name, instance_type=QUOTA_LESS))
        claim = await eventually(
            lambda: client.get(NODECLAIM, name),
            until=lambda c: condition(c, "Launched").get("status") == "False",
            timeout=60,
            what="launch failed",
        )
        launched = condition(claim, "Launched")
        assert launched["reason"] == "QuotaExceeded"
        assert QUOTA_LESS in launched["message"]
        ready = condition(claim, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "QuotaExceeded")
        events = await eventually(
            lambda: events_for(client, name),
            until=lambda evs: any(e["reason"] == "QuotaExceeded" for e in evs),
            timeout=30,
            what="QuotaExceeded event",
        )
        assert any(e["type"] == "Warning" for e in events if e["reason"] == "QuotaExceeded")
        await asyncio.sleep(2.0)  # several poll intervals: a retry loop would show here
        assert calls == [name]
        after = await client.get(NODECLAIM, name)
        assert condition(after, "Launched")["lastTransitionTime"] == launched["lastTransitionTime"]
        assert await claim_nodes(client, name) == []
    finally:
        await client.delete(NODECLAIM, name)
        await wait_claim_gone(client, name)
        await running.stop()


async def test_garbage_collector_deletes_instances_without_a_claim(cloud_env: Cloud) -> None:
    client = cloud_env.client
    settings = ProvisionerSettings(poll_interval_s=0.3, gc_interval_s=3600, gc_grace_s=0.0)
    running = await start(client, cloud_env.provider(), settings)
    kept, leaked = claim_name(), claim_name()
    try:
        await client.create(NODECLAIM, nodeclaim(kept))
        await wait_ready(client, kept)
        # An instance whose claim never existed: what a crash between launch and recording leaves.
        provider = cloud_env.provider()
        req = LaunchRequest(
            claim_name=leaked,
            instance_type=A100,
            labels={NODECLAIM_LABEL: leaked},
            taints=[Taint("sku", "NoSchedule", "gpu")],
        )
        token = await provider.begin_launch(req)
        await eventually(
            lambda: provider.poll_launch(req, token), until=lambda p: p.done, timeout=30, what="leak launched"
        )
        assert leaked in await cloud_env.instances()
        deleted = await running.provisioner.collector.collect_once()
        assert deleted == [leaked]
        await eventually(
            cloud_env.instances, until=lambda names: leaked not in names, timeout=30, what="leak collected"
        )
        assert kept in await cloud_env.instances()
    finally:
        await client.delete(NODECLAIM, kept)
        await wait_claim_gone(client, kept)
        await running.stop()
        for n in await claim_nodes(client, leaked):
            with contextlib.suppress(NotFound):
                await client.delete(kinds.NODE, n["metadata"]["name"])


async def test_claims_of_another_node_class_are_left_alone(cloud_env: Cloud) -> None:
    client = cloud_env.client
    running = await start(client, cloud_env.provider(), FAST)
    name = claim_name()
    theirs = nodeclaim(name)
    theirs["spec"]["nodeClassRef"] = {
        "group": "karpenter.azure.com",
        "kind": "AKSNodeClass",
        "name": "default",
    }
    try:
        await client.create(NODECLAIM, theirs)
        await asyncio.sleep(2.0)
        claim = await client.get(NODECLAIM, name)
        assert not claim["metadata"].get("finalizers")
        assert not (claim.get("status") or {}).get("conditions")
        assert name not in await cloud_env.instances()
    finally:
        await client.delete(NODECLAIM, name)
        await wait_claim_gone(client, name)
        await running.stop()


async def test_registration_settles_a_conflict_with_the_nodes_agent(
    api_client: ApiClient, tmp_path: Path
) -> None:
    """The node's agent writes it between our read and our patch (kwok and the kubelet do, all
    the time): the conditional registration patch conflicts, and is redone on a fresh read
    without losing the agent's change or failing the reconcile."""
    from kaitopy.provisioner.lifecycle import NodeClaimLifecycle
    from kaitopy.runtime import EventRecorder, Store

    client = Client(api_client)
    await ensure_crds(client)
    name = claim_name()
    body = nodeclaim(name)
    # Another node class: no provisioner running on this cluster may take the claim meanwhile.
    body["spec"]["nodeClassRef"] = {"group": "example.com", "kind": "OtherNodeClass", "name": "x"}
    claim = await client.create(NODECLAIM, body)
    node = await client.create(
        kinds.NODE,
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"agent": "v1"}},
            "spec": {"taints": [{"key": "karpenter.sh/unregistered", "effect": "NoExecute"}]},
        },
    )
    try:
        await client.patch(kinds.NODE, name, {"metadata": {"labels": {"agent": "v2"}}})  # the agent
        async with cloud("kwok", client, tmp_path, launch_delay_s=0) as kwok:
            recorder = EventRecorder(client, "test")
            lifecycle = NodeClaimLifecycle(client, Store(), Store(), kwok.provider(), recorder)
            adopted = await lifecycle._adopt_node(claim, node)  # with the copy read before the agent wrote
            await recorder.close()
        labels = adopted["metadata"]["labels"]
        assert labels["agent"] == "v2"  # the agent's write survived
        assert labels[NODECLAIM_LABEL] == name and labels["karpenter.sh/registered"] == "true"
        taints = {t["key"] for t in adopted["spec"]["taints"]}
        assert "sku" in taints and "karpenter.sh/unregistered" not in taints
        assert [o["name"] for o in adopted["metadata"]["ownerReferences"]] == [name]
    finally:
        with contextlib.suppress(NotFound):
            await client.delete(kinds.NODE, name)
        with contextlib.suppress(NotFound):
            await client.delete(NODECLAIM, name)
