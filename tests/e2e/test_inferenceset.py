"""An InferenceSet with the operator running as its users run it (kwok nodes): it scales through
the scale subresource with `kubectl scale` and with an autoscaling/v2 HorizontalPodAutoscaler, each
member gets its own node, scale down deletes a member that is not ready first, and deleting the set
deletes its members and their nodes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes_asyncio.client.api_client import ApiClient

from kaitopy.runtime import Client, Kind, kinds
from tests.e2e.operator import Operator
from tests.support.cluster import Cluster
from tests.support.wait import eventually

pytestmark = pytest.mark.e2e

INFERENCESET = Kind("kaito.sh", "v1beta1", "InferenceSet", "inferencesets")
WORKSPACE = Kind("kaito.sh", "v1beta1", "Workspace", "workspaces")
NODECLAIM = Kind("karpenter.sh", "v1", "NodeClaim", "nodeclaims", namespaced=False)
HPA = Kind("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")


@pytest.fixture
def client(api_client: ApiClient) -> Client:
    return Client(api_client)


def phi3_set(name: str, namespace: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "InferenceSet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "labelSelector": {"matchLabels": {"apps": name}},
            "template": {
                "resource": {"instanceType": "Standard_NC6s_v3"},
                "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
            },
        },
    }


async def members(client: Client, name: str, ns: str) -> list[dict[str, Any]]:
    items = (await client.list(WORKSPACE, ns, label_selector=f"kaito.sh/inferenceset={name}")).items
    return [w for w in items if not w["metadata"].get("deletionTimestamp")]


async def wait_ready(client: Client, name: str, ns: str, n: int, timeout: float = 180) -> dict[str, Any]:
    def settled(s: dict[str, Any]) -> bool:
        st = s.get("status") or {}
        return st.get("replicas") == n and st.get("readyReplicas", 0) == n

    done: dict[str, Any] = await eventually(
        lambda: client.get(INFERENCESET, name, namespace=ns),
        until=settled,
        timeout=timeout,
        what=f"inferenceset {ns}/{name} with {n} ready members",
    )
    return done


async def worker_nodes(client: Client, name: str, ns: str) -> set[str]:
    return {
        n for w in await members(client, name, ns) for n in (w.get("status") or {}).get("workerNodes") or ()
    }


async def test_scale_subresource_hpa_and_deletion(
    operator: Operator, kube_cluster: Cluster, client: Client, namespace: str
) -> None:
    operator.start_provisioner()
    operator.start_controller()
    name = "phi"
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(phi3_set(name, namespace, 1)))
    done = await wait_ready(client, name, namespace, 1)
    assert done["status"]["selector"] == f"kaito.sh/workspace in ({name}-0)"
    header = kube_cluster.kubectl("get", "inferenceset", name, "-n", namespace).splitlines()[0].split()
    assert header == ["NAME", "REPLICAS", "READYREPLICAS", "AGE"]

    # kubectl scale goes through the scale subresource.
    kube_cluster.kubectl("scale", "inferenceset", name, "-n", namespace, "--replicas=3")
    await wait_ready(client, name, namespace, 3)
    assert sorted(w["metadata"]["name"] for w in await members(client, name, namespace)) == [
        f"{name}-0",
        f"{name}-1",
        f"{name}-2",
    ]
    assert len(await worker_nodes(client, name, namespace)) == 3  # one node per member
    scale = json.loads(
        kube_cluster.kubectl(
            "get", "--raw", f"/apis/kaito.sh/v1beta1/namespaces/{namespace}/inferencesets/{name}/scale"
        )
    )
    assert (scale["spec"]["replicas"], scale["status"]["replicas"]) == (3, 3)
    assert scale["status"]["selector"] == f"kaito.sh/workspace in ({name}-0,{name}-1,{name}-2)"

    # Scale down takes a member that is not ready first: phi-0 loses its pod, whose replacement cannot
    # schedule on the cordoned node.
    first = await client.get(WORKSPACE, f"{name}-0", namespace=namespace)
    (node0,) = first["status"]["workerNodes"]
    kube_cluster.kubectl("cordon", node0)
    kube_cluster.kubectl(
        "delete", "pods", "-n", namespace, "-l", f"kaito.sh/workspace={name}-0", "--wait=false"
    )
    await eventually(
        lambda: client.get(INFERENCESET, name, namespace=namespace),
        until=lambda s: (s.get("status") or {}).get("readyReplicas") == 2,
        timeout=120,
        what="phi-0 not ready",
    )
    kube_cluster.kubectl("scale", "inferenceset", name, "-n", namespace, "--replicas=2")
    await wait_ready(client, name, namespace, 2)
    assert sorted(w["metadata"]["name"] for w in await members(client, name, namespace)) == [
        f"{name}-1",
        f"{name}-2",
    ]

    # An HPA drives the set through the same subresource: with 2 members and minReplicas 3 the HPA
    # controller scales it to 3 (bounds need no metrics API).
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"apiVersion": "kaito.sh/v1beta1", "kind": "InferenceSet", "name": name},
            "minReplicas": 3,
            "maxReplicas": 4,
        },
    }
    await client.create(HPA, hpa)
    await wait_ready(client, name, namespace, 3, timeout=120)
    got = await client.get(INFERENCESET, name, namespace=namespace)
    assert got["spec"]["replicas"] == 3
    hpa_now = await client.get(HPA, name, namespace=namespace)
    assert hpa_now["status"]["desiredReplicas"] == 3
    await client.delete(HPA, name, namespace)

    nodes = await worker_nodes(client, name, namespace) | {node0}
    assert len(nodes) == 4
    kube_cluster.kubectl("delete", "inferenceset", name, "-n", namespace, "--wait=false")
    await eventually(
        lambda: client.list(WORKSPACE, namespace),
        until=lambda ws: not ws.items,
        timeout=120,
        what="members deleted with their set",
    )
    sel = f"kaito.sh/workspacenamespace={namespace}"
    await eventually(
        lambda: client.list(NODECLAIM, label_selector=sel),
        until=lambda claims: not claims.items,
        timeout=120,
        what="the members' node claims deleted",
    )
    for node in nodes:
        await eventually(
            lambda n=node: client.get_or_none(kinds.NODE, n),
            until=lambda obj: obj is None,
            timeout=60,
            what=f"node {node} deleted",
        )
