"""The Workspace CRD installed from the committed manifest, once per session."""

from __future__ import annotations

import contextlib
import copy
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio.client.api_client import ApiClient

from kaitopy.runtime import Client, kinds
from kaitopy.webhooks.server import VALIDATING_WEBHOOK_CONFIGURATION, WebhookServer, WebhookSettings
from tests.support.cluster import Cluster

REPO = Path(__file__).resolve().parents[3]
CRD = REPO / "manifests" / "crds" / "kaito.sh_workspaces.yaml"
EXAMPLES = REPO / "examples"
DEFAULT_CONFIGS = REPO / "manifests" / "base" / "default-configs.yaml"


@pytest.fixture(scope="session")
def workspace_crd(kube_cluster: Cluster) -> Cluster:
    kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/workspaces.kaito.sh")
    return kube_cluster


@contextlib.asynccontextmanager
async def serving_webhook(client: Client, own_namespace: str, watched: str) -> AsyncIterator[WebhookServer]:
    """A webhook whose own namespace (certificate, operator-namespace ConfigMaps) is
    `own_namespace`, limited to the workspaces in `watched`: other tests sharing the cluster never
    meet it. Its configuration is removed afterwards."""
    settings = WebhookSettings(
        host="127.0.0.1",
        port=0,
        namespace=own_namespace,
        url="https://127.0.0.1:{port}/validate",
        service_name=None,
        configuration_name=f"kaitopy-test-{uuid.uuid4().hex[:8]}",
        namespace_selector={"matchLabels": {"kubernetes.io/metadata.name": watched}},
    )
    server = WebhookServer(client, settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        await client.delete(VALIDATING_WEBHOOK_CONFIGURATION, settings.configuration_name)


@pytest.fixture(scope="session")
def unserved_crds(workspace_crd: Cluster) -> Cluster:
    """The shipped CRDs of the Kaito kinds kaitopy does not serve yet (RAGEngine, MultiRoleInference)."""
    for name in ("ragengines", "multiroleinferences"):
        path = REPO / "manifests" / "crds" / f"kaito.sh_{name}.yaml"
        workspace_crd.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        workspace_crd.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}.kaito.sh")
    return workspace_crd


@pytest.fixture
async def webhook(
    workspace_crd: Cluster, api_client: ApiClient, namespace: str
) -> AsyncIterator[WebhookServer]:
    async with serving_webhook(Client(api_client), namespace, namespace) as server:
        yield server


@pytest.fixture
async def operator_webhook(
    workspace_crd: Cluster, api_client: ApiClient, namespace: str
) -> AsyncIterator[WebhookServer]:
    """A webhook whose own (operator) namespace is not the workspaces' and holds the shipped
    templates, as kaito-system does in an install."""
    client = Client(api_client)
    ops = f"ops-{uuid.uuid4().hex[:8]}"
    workspace_crd.kubectl("create", "namespace", ops)
    try:
        for doc in yaml.safe_load_all(DEFAULT_CONFIGS.read_text()):
            doc["metadata"]["namespace"] = ops
            await client.create(kinds.CONFIG_MAP, doc)
        await client.create(
            kinds.CONFIG_MAP,
            {"metadata": {"name": "my-qlora-params", "namespace": ops}, "data": {"training_config.yaml": ""}},
        )
        async with serving_webhook(client, ops, namespace) as server:
            yield server
    finally:
        workspace_crd.kubectl("delete", "namespace", ops, "--wait=false")


def kubectl_apply(
    cluster: Cluster, namespace: str, *docs: dict[str, Any], verb: str = "apply", as_user: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`kubectl apply` (or create/replace) of the given objects, as `as_user` (impersonated) when
    given; the caller looks at returncode and stderr."""
    exe = str(cluster.bin_dir / "kubectl") if cluster.bin_dir else "kubectl"
    impersonate = [f"--as={as_user}"] if as_user else []
    return subprocess.run(
        [exe, f"--kubeconfig={cluster.kubeconfig}", *impersonate, "-n", namespace, verb, "-f", "-"],
        # JSON, not YAML: kubectl's YAML 1.1 reads a bare y or n as a boolean.
        input=json.dumps(
            docs[0] if len(docs) == 1 else {"apiVersion": "v1", "kind": "List", "items": list(docs)}
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )


def example_docs() -> list[tuple[str, list[dict[str, Any]]]]:
    return [
        (str(p.relative_to(EXAMPLES)), [d for d in yaml.safe_load_all(p.read_text()) if d])
        for p in sorted(EXAMPLES.rglob("*.yaml"))
    ]


def phi3(name: str = "ws") -> dict[str, Any]:
    """A valid inference workspace to derive bad cases from."""
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name},
        "resource": {
            "instanceType": "Standard_NC6s_v3",
            "labelSelector": {"matchLabels": {"apps": "phi-3"}},
        },
        "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
    }


def tuning(name: str = "tune") -> dict[str, Any]:
    """A valid tuning workspace to derive bad cases from."""
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name},
        "resource": {
            "instanceType": "Standard_NC24ads_A100_v4",
            "labelSelector": {"matchLabels": {"app": "tune"}},
        },
        "tuning": {
            "preset": {"name": "phi-3-mini-4k-instruct"},
            "method": "qlora",
            "input": {"urls": ["https://example.com/data.parquet"]},
            "output": {"image": "registry.example.com/adapter:1", "imagePushSecret": "push"},
        },
    }


def edit(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy with top-level keys replaced (None removes)."""
    out = copy.deepcopy(doc)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out
