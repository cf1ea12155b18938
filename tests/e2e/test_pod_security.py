"""The pods the operator creates are admitted by Pod Security "restricted": the real controller and
kwok provisioner run a Workspace of each kind (one node, adapters, several nodes, tuning) in a
namespace labelled `pod-security.kubernetes.io/enforce=restricted`, and the API server's own
admission (which runs whatever the nodes are) lets every pod in."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes_asyncio.client.api_client import ApiClient

from kaitopy.controllers.workspace.podsecurity import RUN_AS_UID
from kaitopy.runtime import Client, Kind, kinds
from tests.e2e.operator import Operator
from tests.e2e.test_workspace import apply, cond, delete_and_wait, phi3, wait_condition
from tests.support.cluster import Cluster
from tests.support.wait import eventually

CORE_EVENT = Kind("", "v1", "Event", "events")


@pytest.fixture
def client(api_client: ApiClient) -> Client:
    return Client(api_client)


def restrict(kube: Cluster, namespace: str) -> None:
    kube.kubectl(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )
    # The control: the label is enforced here, so a pod that is not restricted is refused.
    root_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "root", "namespace": namespace},
        "spec": {"containers": [{"name": "c", "image": "registry.local/any:1"}]},
    }
    refused = kube.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(root_pod), check=False)
    assert 'violates PodSecurity "restricted:latest"' in refused, refused


def workspaces(namespace: str) -> list[dict[str, Any]]:
    adapters = [{"source": {"name": "ada", "image": "registry.local/adapters/ada:1"}, "strength": "0.5"}]
    multi = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": "psa-70b", "namespace": namespace},
        "resource": {
            "instanceType": "Standard_NC24ads_A100_v4",
            "labelSelector": {"matchLabels": {"apps": "psa-70b"}},
        },
        "inference": {
            "preset": {"name": "llama-3.3-70b-instruct", "presetOptions": {"modelAccessSecret": "hf-token"}}
        },
    }
    tuning = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": "psa-tune", "namespace": namespace},
        "resource": {
            "instanceType": "Standard_NC6s_v3",
            "labelSelector": {"matchLabels": {"apps": "psa-tune"}},
        },
        "tuning": {
            "preset": {"name": "phi-3-mini-4k-instruct"},
            "method": "qlora",
            "input": {"urls": ["https://example.com/data/train.jsonl"]},
            "output": {"image": "registry.local/adapters/phi:1", "imagePushSecret": "push"},
        },
    }
    return [phi3("psa-one", namespace), phi3("psa-adapters", namespace, adapters=adapters), multi, tuning]


def assert_restricted(pod: dict[str, Any]) -> None:
    spec = pod["spec"]
    assert spec["securityContext"]["runAsUser"] == RUN_AS_UID and spec["securityContext"]["runAsNonRoot"]
    assert spec["automountServiceAccountToken"] is False
    for c in [*(spec.get("initContainers") or []), *spec["containers"]]:
        ctx = c["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"] == {"drop": ["ALL"]}
        assert ctx["readOnlyRootFilesystem"] is True
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]


async def test_every_operator_pod_is_admitted_in_a_restricted_namespace(
    operator: Operator, kube_cluster: Cluster, client: Client, namespace: str
) -> None:
    restrict(kube_cluster, namespace)
    operator.start_provisioner()
    operator.start_controller()
    for ws in workspaces(namespace):
        apply(kube_cluster, ws)
    want = {"psa-one": 1, "psa-adapters": 1, "psa-70b": 2, "psa-tune": 1}
    for name, at_least in want.items():
        pods = await eventually(
            lambda n=name: client.list(
                kinds.POD, namespace=namespace, label_selector=f"kaito.sh/workspace={n}"
            ),
            until=lambda p, k=at_least: len(p.items) >= k,
            timeout=180,
            what=f"pods of {name} admitted",
        )
        for pod in pods.items:
            assert_restricted(pod)
    for name in ("psa-one", "psa-adapters", "psa-70b"):
        ws = await wait_condition(client, name, namespace, "WorkspaceSucceeded", timeout=180)
        assert cond(ws, "InferenceReady")["status"] == "True"
    await wait_condition(client, "psa-tune", namespace, "JobStarted")
    events = (await client.list(CORE_EVENT, namespace=namespace)).items
    refused = [e["message"] for e in events if "PodSecurity" in (e.get("message") or "")]
    assert refused == []
    for name in want:
        await delete_and_wait(client, kube_cluster, name, namespace)
