"""Races between the workspace reconciler and its caches, reproduced on purpose: the reconciler
runs over caches the test fills by hand (tests/support/lagcache.py) against the real API server,
so "a write not yet seen by the informer" is a step the test takes, not a timing accident."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from kaitopy.api import WORKSPACE
from kaitopy.api.nodeclaim import NODECLAIM
from kaitopy.controllers.workspace import status as st
from kaitopy.controllers.workspace.crds import ensure_workspace_crd
from kaitopy.controllers.workspace.observe import trim_pod_event
from kaitopy.controllers.workspace.plan import WORKSPACE_LABEL, WORKSPACE_NAMESPACE_LABEL, Settings
from kaitopy.controllers.workspace.reconciler import FINALIZER
from kaitopy.provisioner.install import ensure_crds
from kaitopy.runtime import Client, NotFound, kinds
from tests.integration.controllers.test_workspace_metrics import workspace
from tests.support.cluster import Cluster
from tests.support.lagcache import lagging_controller


@pytest.fixture
async def client(kube_cluster: Cluster) -> AsyncIterator[Client]:
    c = await Client.from_kubeconfig(str(kube_cluster.kubeconfig))
    async with c:
        await ensure_workspace_crd(c)
        await ensure_crds(c)
        yield c


async def claims_of(client: Client, namespace: str, name: str) -> list[str]:
    found = await client.list(NODECLAIM, label_selector=f"{WORKSPACE_LABEL}={name}")
    return [
        c["metadata"]["name"]
        for c in found.items
        if c["metadata"]["labels"].get("kaito.sh/workspacenamespace") == namespace
    ]


async def test_a_workspace_deleted_before_its_claim_is_cached_keeps_its_finalizer(
    client: Client, namespace: str
) -> None:
    ctl = lagging_controller(client)
    await client.create(WORKSPACE, workspace("early", namespace, "phi-4"))
    await ctl.reconcile(namespace, "early")  # adds the finalizer and creates the claim
    made = await claims_of(client, namespace, "early")
    assert made, "the first pass creates a node claim"
    assert ctl.stores.claims.list() == []  # ...which the claims informer has not seen yet

    await client.delete(WORKSPACE, "early", namespace=namespace)
    await ctl.reconcile(namespace, "early")
    # The claim is there on the server: the finalizer stays until it is gone, and it is on its way.
    ws = await client.get(WORKSPACE, "early", namespace=namespace)
    assert FINALIZER in ws["metadata"]["finalizers"]
    deleting = next(c for c in ws["status"]["conditions"] if c["type"] == st.WORKSPACE_DELETING)
    assert deleting["observedGeneration"] == ws["metadata"]["generation"]
    assert await claims_of(client, namespace, "early") == []  # no provisioner: deleted at once

    await ctl.reconcile(namespace, "early")  # nothing left: the finalizer goes, and the workspace
    with pytest.raises(NotFound):
        await client.get(WORKSPACE, "early", namespace=namespace)


def gpu_node(name: str, labels: dict[str, str]) -> dict[str, Any]:
    """A ready GPU node as the nodes informer would hold it (it exists only in the test's cache)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"node.kubernetes.io/instance-type": "Standard_NC24ads_A100_v4", **labels},
        },
        "status": {
            "allocatable": {"nvidia.com/gpu": "1", "cpu": "24", "memory": "220Gi"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def condition(ws: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in ws["status"]["conditions"] if c["type"] == kind)


async def test_the_pass_that_starts_a_rollout_does_not_report_the_new_generation_served(
    client: Client, namespace: str
) -> None:
    ctl = lagging_controller(client, Settings(node_provisioner="byo"))
    ctl.stores.nodes.upsert(gpu_node("gpu-roll", {"m": "roll"}))
    await client.create(WORKSPACE, workspace("roll", namespace, "phi-4"))
    await ctl.reconcile(namespace, "roll")  # creates the Deployment
    # The first generation rolled out and ready, as the cache sees it (the control plane's own
    # deployment controller would write other status: these GPU nodes exist only in the cache).
    dep = dict(await client.get(kinds.DEPLOYMENT, "roll", namespace=namespace))
    dep["status"] = {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
    dep["status"]["observedGeneration"] = dep["metadata"]["generation"]
    ctl.stores.deployments.upsert(dep)
    await ctl.reconcile(namespace, "roll")
    ws = await client.get(WORKSPACE, "roll", namespace=namespace)
    assert condition(ws, st.WORKSPACE_SUCCEEDED)["status"] == "True", ws["status"]

    # An edit that changes the pods: this pass writes the new Deployment, and the cache still
    # holds the old one, ready. The new generation is not served yet, whatever the cache says.
    image = {"inference": {"preset": {"name": "phi-4", "presetOptions": {"image": "other.local/m:2"}}}}
    await client.patch(WORKSPACE, "roll", image, namespace=namespace)
    await ctl.reconcile(namespace, "roll")
    ws = await client.get(WORKSPACE, "roll", namespace=namespace)
    succeeded = condition(ws, st.WORKSPACE_SUCCEEDED)
    assert succeeded["observedGeneration"] == ws["metadata"]["generation"]
    assert succeeded["status"] == "False", succeeded
    assert ws["status"]["state"] != "Ready"


async def test_claims_made_while_a_matching_node_was_away_go_when_it_returns(
    client: Client, namespace: str
) -> None:
    ctl = lagging_controller(client)
    node = gpu_node("pre-existing", {"m": "back"})
    node["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    ctl.stores.nodes.upsert(node)
    await client.create(WORKSPACE, workspace("back", namespace, "phi-4"))
    await ctl.reconcile(namespace, "back")
    standin = await claims_of(client, namespace, "back")
    assert len(standin) == 1, "the NotReady node is made up for by a claim"

    # The node is back (and the claims informer has caught up): the stand-in claim is surplus.
    ctl.stores.nodes.upsert(gpu_node("pre-existing", {"m": "back"}))
    await ctl.sync(NODECLAIM, ctl.stores.claims)
    await ctl.reconcile(namespace, "back")
    assert await claims_of(client, namespace, "back") == []
    ws = await client.get(WORKSPACE, "back", namespace=namespace)
    assert condition(ws, st.RESOURCE_READY)["status"] == "True"
    await client.delete(WORKSPACE, "back", namespace=namespace)
    await ctl.reconcile(namespace, "back")  # no claims left: the finalizer goes


async def test_a_pass_looks_at_its_own_nodes_and_the_shared_ones_not_every_node(
    client: Client, namespace: str
) -> None:
    # Each pass once walked every node of the cluster: with 1,000 workspaces, each with its own
    # node, a start-up did a million node checks on the event loop.
    ctl = lagging_controller(client)
    owned = {WORKSPACE_LABEL: "own", WORKSPACE_NAMESPACE_LABEL: namespace, "m": "own"}
    ctl.stores.nodes.upsert(gpu_node("provisioned-for-it", owned))
    ctl.stores.nodes.upsert(gpu_node("provisioned-for-another", {**owned, WORKSPACE_LABEL: "another"}))
    ctl.stores.nodes.upsert(gpu_node("brought-by-the-user", {"m": "own"}))
    await client.create(WORKSPACE, workspace("own", namespace, "phi-4"))
    ws = await client.get(WORKSPACE, "own", namespace=namespace)
    observed = await ctl.reconciler.observer.observe(ws)
    assert sorted(n["metadata"]["name"] for n in observed.nodes) == [
        "brought-by-the-user",
        "provisioned-for-it",
    ]


def requests_to(client: Client, verb: str, resource: str) -> float:
    return sum(
        s.value
        for family in client.metrics.rest_client_requests_by_resource_total.collect()
        for s in family.samples
        if s.name.endswith("_total") and s.labels == {"verb": verb, "resource": resource}
    )


async def test_a_pods_events_come_from_the_events_cache_not_a_list_per_pod(
    client: Client, namespace: str
) -> None:
    # The API server keeps no watch cache for events: a list by pod uid read every event of the
    # namespace from etcd, and one per workspace start-up made 1,000 start-ups quadratic.
    ctl = lagging_controller(client)
    await client.create(WORKSPACE, workspace("evt", namespace, "phi-4"))
    ws = await client.get(WORKSPACE, "evt", namespace=namespace)
    observed = await ctl.reconciler.observer.observe(ws)
    pod = {"metadata": {"name": "evt-1", "namespace": namespace, "uid": "pod-uid-evt"}}
    mount = {
        "metadata": {"name": "evt-1.1", "namespace": namespace},
        "involvedObject": {"kind": "Pod", "name": "evt-1", "namespace": namespace, "uid": "pod-uid-evt"},
        "reason": "FailedMount",
        "type": "Warning",
        "message": 'MountVolume.SetUp failed for volume "hf": secret "hf" not found',
        "source": {"component": "kubelet"},
    }
    ctl.stores.pod_events.upsert(trim_pod_event(mount))
    lists = requests_to(client, "list", "events")
    read = await ctl.reconciler.observer.with_events(observed, [pod])
    assert [e["reason"] for e in read.pod_events["pod-uid-evt"]] == ["FailedMount"]
    assert requests_to(client, "list", "events") == lists
