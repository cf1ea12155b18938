"""From a Workspace to a ready endpoint, with the operator running as its users run it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio.client.api_client import ApiClient

from kaitopy.runtime import Client, Kind, NotFound, kinds
from tests.e2e.operator import Operator
from tests.support.cluster import Cluster
from tests.support.wait import eventually

WORKSPACE = Kind("kaito.sh", "v1beta1", "Workspace", "workspaces")
NODECLAIM = Kind("karpenter.sh", "v1", "NodeClaim", "nodeclaims", namespaced=False)
RESOURCE_QUOTA = Kind("", "v1", "ResourceQuota", "resourcequotas")
CORE_EVENT = Kind("", "v1", "Event", "events")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEFAULT_CONFIGS = Path(__file__).resolve().parents[2] / "manifests" / "base" / "default-configs.yaml"


def phi3(name: str, namespace: str, **inference: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": namespace},
        "resource": {"instanceType": "Standard_NC6s_v3", "labelSelector": {"matchLabels": {"apps": name}}},
        "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}, **inference},
    }


def cond(ws: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in ((ws or {}).get("status") or {}).get("conditions") or ():
        if c["type"] == type_:
            return dict(c)
    return {}


async def wait_condition(
    client: Client, name: str, ns: str, type_: str, status: str = "True", timeout: float = 120
) -> dict[str, Any]:
    ws: dict[str, Any] = await eventually(
        lambda: client.get(WORKSPACE, name, namespace=ns),
        until=lambda w: cond(w, type_).get("status") == status,
        timeout=timeout,
        what=f"workspace {ns}/{name} {type_}={status}",
    )
    return ws


async def claims_of(client: Client, name: str, ns: str) -> list[dict[str, Any]]:
    sel = f"kaito.sh/workspace={name},kaito.sh/workspacenamespace={ns}"
    try:
        return list((await client.list(NODECLAIM, label_selector=sel)).items)
    except NotFound:
        return []  # the kind is not served (byo mode on a cluster no provisioner ever ran on)


def apply(kube: Cluster, obj: dict[str, Any]) -> None:
    kube.kubectl("apply", "-f", "-", input=json.dumps(obj))


async def delete_and_wait(client: Client, kube: Cluster, name: str, ns: str) -> None:
    kube.kubectl("delete", "workspace", name, "-n", ns, "--wait=false")
    await eventually(
        lambda: client.get_or_none(WORKSPACE, name, namespace=ns),
        until=lambda w: w is None,
        timeout=120,
        what=f"workspace {ns}/{name} deleted",
    )


@pytest.fixture
def client(api_client: ApiClient) -> Client:
    return Client(api_client)


async def test_phi3_example_becomes_ready_and_is_cleaned_up(
    operator: Operator, kube_cluster: Cluster, client: Client, namespace: str
) -> None:
    operator.start_provisioner()
    operator.start_controller()
    example = yaml.safe_load((EXAMPLES / "inference" / "kaito_workspace_phi_3.yaml").read_text())
    example["metadata"]["namespace"] = namespace
    name = example["metadata"]["name"]
    apply(kube_cluster, example)
    ws = await wait_condition(client, name, namespace, "WorkspaceSucceeded")
    for t in ("ResourceReady", "InferenceReady", "NodeClaimReady"):
        assert cond(ws, t)["status"] == "True", cond(ws, t)
    assert ws["status"]["state"] == "Ready"
    assert ws["status"]["targetNodeCount"] == 1
    claims = await claims_of(client, name, namespace)
    assert len(claims) == 1
    node_name = claims[0]["status"]["nodeName"]
    assert ws["status"]["workerNodes"] == [node_name]
    dep = await client.get(kinds.DEPLOYMENT, name, namespace=namespace)
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    pod_spec = dep["spec"]["template"]["spec"]
    assert "--engine=transformers" in pod_spec["containers"][0]["args"]  # V100: no vLLM
    svc = await client.get(kinds.SERVICE, name, namespace=namespace)
    assert svc["spec"]["ports"][0]["port"] == 80
    printed = kube_cluster.kubectl("get", "workspace", name, "-n", namespace).splitlines()
    header = printed[0].split()
    assert header[:6] == [
        "NAME",
        "INSTANCE",
        "RESOURCEREADY",
        "INFERENCEREADY",
        "JOBSTARTED",
        "WORKSPACESUCCEEDED",
    ]
    row = printed[1].split()
    assert row[:4] == [name, "Standard_NC6s_v3", "True", "True"]

    await delete_and_wait(client, kube_cluster, name, namespace)
    assert await claims_of(client, name, namespace) == []
    assert await client.get_or_none(kinds.NODE, node_name) is None
    # The model was stopped before its node was drained: no replacement pod was ever created.
    events = (await client.list(CORE_EVENT, namespace=namespace)).items
    created = [
        e
        for e in events
        if e.get("reason") == "SuccessfulCreate" and e["involvedObject"]["kind"] == "ReplicaSet"
    ]
    assert sum(int(e.get("count") or 1) for e in created) == 1, [e.get("message") for e in created]
    await eventually(
        lambda: client.get_or_none(kinds.DEPLOYMENT, name, namespace=namespace),
        until=lambda d: d is None,
        timeout=60,
        what="deployment garbage-collected",
    )


async def test_70b_model_spans_nodes_with_a_statefulset(
    operator: Operator, kube_cluster: Cluster, client: Client, namespace: str
) -> None:
    operator.start_provisioner()
    operator.start_controller()
    name = "llama70b"
    ws = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": namespace},
        "resource": {
            "instanceType": "Standard_NC24ads_A100_v4",
            "labelSelector": {"matchLabels": {"apps": name}},
        },
        # Gated on Hugging Face: the webhook insists on a token Secret.
        "inference": {
            "preset": {"name": "llama-3.3-70b-instruct", "presetOptions": {"modelAccessSecret": "hf-token"}}
        },
    }
    apply(kube_cluster, ws)
    done = await wait_condition(client, name, namespace, "WorkspaceSucceeded", timeout=180)
    target = done["status"]["targetNodeCount"]
    assert target >= 2
    assert len(await claims_of(client, name, namespace)) == target
    sts = await client.get(kinds.STATEFUL_SET, name, namespace=namespace)
    assert sts["spec"]["replicas"] == target
    assert sts["status"]["readyReplicas"] == target
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--engine=vllm" in args and f"--pipeline-parallel-size={target}" in args
    env = sts["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}} in env
    headless = await client.get(kinds.SERVICE, f"{name}-headless", namespace=namespace)
    assert headless["spec"]["clusterIP"] == "None"
    # The ranks' ports are open to the group's pods only.
    fence = await client.get(kinds.NETWORK_POLICY, f"{name}-group-ingress", namespace=namespace)
    assert fence["spec"]["podSelector"]["matchLabels"] == {"kaito.sh/workspace": name}
    assert fence["metadata"]["ownerReferences"][0]["name"] == name
    pods = (
        await client.list(kinds.POD, namespace=namespace, label_selector=f"kaito.sh/workspace={name}")
    ).items
    assert len({p["spec"]["nodeName"] for p in pods}) == target  # one pod per node
    await delete_and_wait(client, kube_cluster, name, namespace)
    assert await claims_of(client, name, namespace) == []


async def test_workspaces_sharing_labels_each_get_their_own_node(
    operator: Operator, kube_cluster: Cluster, client: Client, namespace: str
) -> None:
    # Issue 19.4: nodes used to be matched by labelSelector alone, so the second workspace took
    # the first one's node and provisioned none.
    operator.start_provisioner()
    operator.start_controller()
    for name in ("first", "second"):
        ws = phi3(name, namespace)
        ws["resource"]["labelSelector"] = {"matchLabels": {"apps": "shared"}}
        apply(kube_cluster, ws)
    workers = {}
    for name in ("first", "second"):
        done = await wait_condition(client, name, namespace, "WorkspaceSucceeded")
        assert len(await claims_of(client, name, namespace)) == 1
        workers[name] = done["status"]["workerNodes"]
    assert len(workers["first"]) == len(workers["second"]) == 1
    assert workers["first"] != workers["second"]
    for name in ("first", "second"):
        await delete_and_wait(client, kube_cluster, name, namespace)


async def test_adapters_added_then_swapped_keep_the_nodes_and_the_pod(
    operator: Operator, kube_cluster: Cluster, client: Client, namespace: str
) -> None:
    operator.start_provisioner()
    operator.start_controller()
    name = "phi-adapters"
    apply(kube_cluster, phi3(name, namespace))
    await wait_condition(client, name, namespace, "WorkspaceSucceeded")
    claims_before = sorted(c["metadata"]["name"] for c in await claims_of(client, name, namespace))
    selector = f"kaito.sh/workspace={name}"
    pods_before = await client.list(kinds.POD, namespace=namespace, label_selector=selector)
    before = await client.get(kinds.DEPLOYMENT, name, namespace=namespace)
    for adapters in (
        [{"source": {"name": "ada", "image": "registry.local/adapters/ada:1"}, "strength": "0.5"}],
        [{"source": {"name": "bob", "image": "registry.local/adapters/bob:1"}, "strength": "1.0"}],
    ):
        apply(kube_cluster, phi3(name, namespace, adapters=adapters))
        wanted = adapters[0]["source"]["name"]
        # Hot-load: the running pod gets the list; its template, and so the pod, stay.
        pods = await eventually(
            lambda: client.list(kinds.POD, namespace=namespace, label_selector=selector),
            until=lambda found, want=wanted: (
                [
                    [
                        a["name"]
                        for a in json.loads(
                            p["metadata"]["annotations"].get("kaitopy.io/adapters", '{"adapters":[]}')
                        )["adapters"]
                    ]
                    for p in found.items
                ]
                == [[want]]
            ),
            timeout=60,
            what=f"the adapter list [{wanted}] on the running pod",
        )
        assert [p["metadata"]["uid"] for p in pods.items] == [p["metadata"]["uid"] for p in pods_before.items]
        dep = await client.get(kinds.DEPLOYMENT, name, namespace=namespace)
        assert dep["spec"]["template"] == before["spec"]["template"]
    claims_after = sorted(c["metadata"]["name"] for c in await claims_of(client, name, namespace))
    assert claims_after == claims_before  # same nodes: adapters never re-provision
    await delete_and_wait(client, kube_cluster, name, namespace)


async def test_bring_your_own_nodes(
    operator: Operator, kube_cluster: Cluster, client: Client, namespace: str
) -> None:
    operator.start_controller("--node-provisioner=byo")
    name = "phi-byo"
    node_name = f"byo-{namespace}"
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node_name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {"apps": name, "node.kubernetes.io/instance-type": "Standard_NC6s_v3", "type": "kwok"},
        },
        "status": {
            "capacity": {"cpu": "6", "memory": "112Gi", "pods": "110", "nvidia.com/gpu": "1"},
            "allocatable": {"cpu": "6", "memory": "112Gi", "pods": "110", "nvidia.com/gpu": "1"},
        },
    }
    apply(kube_cluster, phi3(name, namespace))
    ws = await wait_condition(client, name, namespace, "ResourceReady", status="False")
    assert cond(ws, "ResourceReady")["reason"] == "NodesNotFound"
    try:
        await client.create(kinds.NODE, node)
        ws = await wait_condition(client, name, namespace, "WorkspaceSucceeded")
        assert ws["status"]["workerNodes"] == [node_name]
        assert await claims_of(client, name, namespace) == []
        await delete_and_wait(client, kube_cluster, name, namespace)
        assert await client.get_or_none(kinds.NODE, node_name) is not None  # the user's node stays
    finally:
        await client.delete(kinds.NODE, node_name)


async def test_template_workspace(
    operator: Operator, kube_cluster: Cluster, client: Client, namespace: str
) -> None:
    operator.start_provisioner()
    operator.start_controller()
    name = "custom"
    ws = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": namespace},
        "resource": {"instanceType": "Standard_NC6s_v3", "labelSelector": {"matchLabels": {"apps": name}}},
        "inference": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "server",
                            "image": "registry.local/my-server:1",
                            "ports": [{"containerPort": 8000}],
                        }
                    ]
                }
            }
        },
    }
    apply(kube_cluster, ws)
    await wait_condition(client, name, namespace, "WorkspaceSucceeded")
    dep = await client.get(kinds.DEPLOYMENT, name, namespace=namespace)
    spec = dep["spec"]["template"]["spec"]
    assert spec["containers"][0]["image"] == "registry.local/my-server:1"
    assert any(t.get("key") == "sku" for t in spec["tolerations"])
    svc = await client.get(kinds.SERVICE, name, namespace=namespace)
    assert svc["spec"]["ports"][0]["targetPort"] == 8000
    await delete_and_wait(client, kube_cluster, name, namespace)


async def test_tuning_job_completes_and_the_workspace_succeeds(
    operator: Operator, kube_cluster: Cluster, client: Client, namespace: str
) -> None:
    # As installed: Kaito's default ConfigMaps in the operator's namespace.
    kube_cluster.kubectl("apply", "--server-side", "-f", str(DEFAULT_CONFIGS))
    operator.start_provisioner()
    operator.start_controller()
    name = "tune-phi"
    ws = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": namespace},
        "resource": {"instanceType": "Standard_NC6s_v3", "labelSelector": {"matchLabels": {"apps": name}}},
        "tuning": {
            "preset": {"name": "phi-3-mini-4k-instruct"},
            "method": "qlora",
            "input": {"urls": ["https://example.com/data/train.jsonl"]},
            "output": {"image": "registry.local/adapters/phi:1", "imagePushSecret": "push"},
        },
    }
    apply(kube_cluster, ws)
    started = await wait_condition(client, name, namespace, "JobStarted")
    assert started["status"]["state"] in ("Running", "Succeeded")
    done = await wait_condition(client, name, namespace, "WorkspaceSucceeded", timeout=180)
    assert done["status"]["state"] == "Succeeded"
    job = await client.get(kinds.JOB, name, namespace=namespace)
    assert [c["name"] for c in job["spec"]["template"]["spec"]["initContainers"]] == ["fetch-data", "train"]
    # No tuning.config: the method's template, as in Kaito, copied into the workspace's namespace.
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "qlora-params-template"
    assert await client.get_or_none(kinds.CONFIG_MAP, "qlora-params-template", namespace=namespace)
    # The egress fence went up with the Job, owned by the workspace (docs/security.md).
    policy = await client.get(kinds.NETWORK_POLICY, name, namespace=namespace)
    assert policy["spec"]["podSelector"]["matchLabels"] == {"kaito.sh/workspace": name}
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "Workspace"
    await delete_and_wait(client, kube_cluster, name, namespace)


async def test_quota_failure_surfaces_on_the_workspace(
    operator: Operator, kube_cluster: Cluster, client: Client, namespace: str
) -> None:
    operator.start_provisioner("--kwok-fail=Standard_NC6s_v3=QuotaExceeded")
    operator.start_controller()
    name = "phi-quota"
    apply(kube_cluster, phi3(name, namespace))
    ws = await wait_condition(client, name, namespace, "ResourceReady", status="False")
    ws = await eventually(
        lambda: client.get(WORKSPACE, name, namespace=namespace),
        until=lambda w: cond(w, "ResourceReady").get("reason") == "QuotaExceeded",
        timeout=60,
        what="quota reason on the workspace",
    )
    message = cond(ws, "ResourceReady")["message"]
    assert "Standard_NC6s_v3" in message and "quota" in message.lower()
    assert cond(ws, "WorkspaceSucceeded")["status"] == "False"
    await asyncio.sleep(2)
    assert len(await claims_of(client, name, namespace)) == 1  # no retry storm of new claims
    await delete_and_wait(client, kube_cluster, name, namespace)


async def allow_no_services(kube_cluster: Cluster, client: Client, namespace: str) -> None:
    """A quota of no Services in `namespace`, once the quota controller has observed it: a
    workspace there can never be served."""
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-services", "namespace": namespace},
        "spec": {"hard": {"services": "0"}},
    }
    apply(kube_cluster, quota)
    await eventually(
        lambda: client.get(RESOURCE_QUOTA, "no-services", namespace=namespace),
        until=lambda q: "services" in ((q.get("status") or {}).get("hard") or {}),
        timeout=30,
        what="quota observed by the quota controller",
    )


async def test_a_refused_workload_is_explained_then_recovers(
    operator: Operator, kube_cluster: Cluster, client: Client, namespace: str
) -> None:
    """The API server refuses the model's Service (a quota allows none): the workspace says so in
    the server's words instead of only logging retries, and recovers once the quota is lifted."""
    await allow_no_services(kube_cluster, client, namespace)
    operator.start_provisioner()
    operator.start_controller()
    name = "phi-refused"
    apply(kube_cluster, phi3(name, namespace))
    ws = await eventually(
        lambda: client.get(WORKSPACE, name, namespace=namespace),
        until=lambda w: cond(w, "InferenceReady").get("reason") == "WorkloadRefused",
        timeout=90,
        what="WorkloadRefused on the workspace",
    )
    message = cond(ws, "InferenceReady")["message"]
    assert "exceeded quota" in message and "services" in message, message
    assert cond(ws, "WorkspaceSucceeded")["reason"] == "WorkloadRefused"
    kube_cluster.kubectl("delete", "resourcequota", "no-services", "-n", namespace)
    await wait_condition(client, name, namespace, "WorkspaceSucceeded", timeout=120)
    await delete_and_wait(client, kube_cluster, name, namespace)


async def test_restart_mid_way_creates_nothing_twice_and_resync_writes_nothing(
    operator: Operator, kube_cluster: Cluster, client: Client, namespace: str
) -> None:
    operator.start_provisioner("--kwok-launch-delay=3")
    first = operator.start_controller()
    names = [f"phi-{i}" for i in range(3)]
    for n in names:
        apply(kube_cluster, phi3(n, namespace))
    await eventually(
        lambda: claims_of(client, names[0], namespace), until=lambda c: len(c) == 1, timeout=60, what="claim"
    )
    first.kill()
    operator.start_controller("--resync-period=2")
    for n in names:
        await wait_condition(client, n, namespace, "WorkspaceSucceeded", timeout=180)
        assert len(await claims_of(client, n, namespace)) == 1
    assert operator.controller is not None
    await asyncio.sleep(1.5)  # let the last status writes land
    before = operator.controller.writes()
    resyncs = operator.controller.metric("controller_runtime_reconcile_total", controller="workspace")
    await asyncio.sleep(5)  # two resync periods: every workspace is reconciled again
    assert (
        operator.controller.metric("controller_runtime_reconcile_total", controller="workspace")
        >= resyncs + 3
    )
    assert operator.controller.writes() == before
    for n in names:
        await delete_and_wait(client, kube_cluster, n, namespace)
