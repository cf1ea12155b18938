"""Kaito's default templates copied into a workspace's namespace (controllers/workspace/
defaultconfigs.py) against the real API server: the copy is made once, owned by every workspace
using it; a user's ConfigMap of that name is never overwritten; no other name crosses namespaces."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio.client.api_client import ApiClient

from kaitopy.api.defaultconfigs import COPY_LABEL
from kaitopy.controllers.workspace.defaultconfigs import resolve_config
from kaitopy.controllers.workspace.inferenceconfig import configured_max_model_len
from kaitopy.runtime import Client, Kind, kinds
from tests.support.cluster import Cluster

REPO = Path(__file__).resolve().parents[3]
SHIPPED = REPO / "manifests" / "base" / "default-configs.yaml"
CRD = REPO / "manifests" / "crds" / "kaito.sh_workspaces.yaml"
WORKSPACE = Kind("kaito.sh", "v1beta1", "Workspace", "workspaces")


@pytest.fixture
async def operator_ns(kube_cluster: Cluster, api_client: ApiClient) -> AsyncIterator[str]:
    """A namespace standing for kaito-system, holding the shipped templates."""
    ns = f"ops-{uuid.uuid4().hex[:8]}"
    kube_cluster.kubectl("create", "namespace", ns)
    for doc in yaml.safe_load_all(SHIPPED.read_text()):
        doc["metadata"]["namespace"] = ns
        await Client(api_client).create(kinds.CONFIG_MAP, doc)
    try:
        yield ns
    finally:
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false")


async def workspace(kube: Cluster, client: Client, name: str, ns: str) -> dict[str, Any]:
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/workspaces.kaito.sh")
    ws = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": ns},
        "resource": {"instanceType": "Standard_NC6s_v3", "labelSelector": {"matchLabels": {"a": name}}},
        "tuning": {
            "preset": {"name": "phi-3-mini-4k-instruct"},
            "method": "qlora",
            "input": {"urls": ["https://example.com/d.jsonl"]},
            "output": {"image": "registry.local/a:1"},
        },
    }
    created: dict[str, Any] = await client.create(WORKSPACE, ws)
    return created


async def test_a_missing_template_is_copied_and_owned_by_each_workspace_using_it(
    kube_cluster: Cluster, api_client: ApiClient, namespace: str, operator_ns: str
) -> None:
    client = Client(api_client)
    a = await workspace(kube_cluster, client, "a", namespace)
    b = await workspace(kube_cluster, client, "b", namespace)
    # Named in tuning.config, as Kaito's falcon example does.
    name = await resolve_config(client, a, "qlora-params-template", "qlora-params-template", operator_ns)
    assert name == "qlora-params-template"
    copy = await client.get(kinds.CONFIG_MAP, name, namespace)
    default = await client.get(kinds.CONFIG_MAP, name, operator_ns)
    assert copy["data"] == default["data"]
    assert copy["metadata"]["labels"][COPY_LABEL] == "true"
    # tuning.config empty: the method's template, the same copy, now owned by both.
    assert await resolve_config(client, b, None, "qlora-params-template", operator_ns) == name
    copy = await client.get(kinds.CONFIG_MAP, name, namespace)
    owners = {r["uid"] for r in copy["metadata"]["ownerReferences"]}
    assert owners == {a["metadata"]["uid"], b["metadata"]["uid"]}
    assert not any(r.get("controller") for r in copy["metadata"]["ownerReferences"])


async def test_a_users_configmap_of_that_name_is_never_overwritten(
    api_client: ApiClient, kube_cluster: Cluster, namespace: str, operator_ns: str
) -> None:
    client = Client(api_client)
    ws = await workspace(kube_cluster, client, "w", namespace)
    mine = {"training_config.yaml": "training_config: {LoraConfig: {r: 16}}\n"}
    await client.create(
        kinds.CONFIG_MAP,
        {"metadata": {"name": "lora-params-template", "namespace": namespace}, "data": mine},
    )
    # Named: the user's own is mounted as it is.
    assert (
        await resolve_config(client, ws, "lora-params-template", None, operator_ns) == "lora-params-template"
    )
    # Not named: one we did not make is not mounted; the built-in defaults apply.
    assert await resolve_config(client, ws, None, "lora-params-template", operator_ns) is None
    cm = await client.get(kinds.CONFIG_MAP, "lora-params-template", namespace)
    assert cm["data"] == mine and not cm["metadata"].get("ownerReferences")


async def test_no_other_configmap_crosses_namespaces(
    api_client: ApiClient, kube_cluster: Cluster, namespace: str, operator_ns: str
) -> None:
    client = Client(api_client)
    ws = await workspace(kube_cluster, client, "w", namespace)
    await client.create(
        kinds.CONFIG_MAP,
        {"metadata": {"name": "team-secret-params", "namespace": operator_ns}, "data": {"k": "v"}},
    )
    assert await resolve_config(client, ws, "team-secret-params", None, operator_ns) == "team-secret-params"
    assert await client.get_or_none(kinds.CONFIG_MAP, "team-secret-params", namespace) is None
    # A template that is not installed: nothing is made; an empty config falls back to the built-ins.
    await client.delete(kinds.CONFIG_MAP, "lora-params-template", operator_ns)
    assert await resolve_config(client, ws, None, "lora-params-template", operator_ns) is None
    assert await client.get_or_none(kinds.CONFIG_MAP, "lora-params-template", namespace) is None


async def test_the_first_plan_reads_an_uncopied_inference_template_where_the_webhook_did(
    api_client: ApiClient, namespace: str, operator_ns: str
) -> None:
    client = Client(api_client)
    default = await client.get(kinds.CONFIG_MAP, "inference-params-template", operator_ns)
    data = {"inference_config.yaml": "vllm:\n  max-model-len: 4096\n"}
    await client.patch(kinds.CONFIG_MAP, default["metadata"]["name"], {"data": data}, namespace=operator_ns)
    ws = {
        "metadata": {"name": "w", "namespace": namespace},
        "inference": {"config": "inference-params-template"},
    }
    assert await configured_max_model_len(client, ws, operator_ns) == 4096
    # Any other name is read in the workspace's namespace only.
    await client.create(
        kinds.CONFIG_MAP, {"metadata": {"name": "other", "namespace": operator_ns}, "data": data}
    )
    ws["inference"]["config"] = "other"
    assert await configured_max_model_len(client, ws, operator_ns) is None
