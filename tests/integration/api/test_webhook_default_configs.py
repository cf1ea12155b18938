"""Admission of Workspaces naming Kaito's default templates (qlora-params-template ...): admitted
when the template is shipped in the operator's namespace (the controller copies it), refused as
before for any other name found only there, and a user's own ConfigMap of that name is judged as
theirs, never replaced by the default."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
import yaml

from kaitopy.webhooks.server import WebhookServer
from tests.integration.api.conftest import kubectl_apply
from tests.integration.api.test_kaito_examples import KAITO_EXAMPLES
from tests.support.cluster import Cluster

FALCON = KAITO_EXAMPLES / "fine-tuning" / "kaito_workspace_tuning_falcon_7b_mental.yaml"

TUNING: dict[str, Any] = {
    "apiVersion": "kaito.sh/v1beta1",
    "kind": "Workspace",
    "metadata": {"name": "tune"},
    "resource": {"instanceType": "Standard_NC6s_v3", "labelSelector": {"matchLabels": {"a": "tune"}}},
    "tuning": {
        "preset": {"name": "phi-3-mini-4k-instruct"},
        "method": "qlora",
        "input": {"urls": ["https://example.com/d.jsonl"]},
        "output": {"image": "registry.local/a:1", "imagePushSecret": "push"},
    },
}


async def apply(cluster: Cluster, namespace: str, doc: dict[str, Any]) -> str:
    done = await asyncio.to_thread(kubectl_apply, cluster, namespace, doc)
    return "admitted" if done.returncode == 0 else done.stderr.strip()


def tuning(config: str) -> dict[str, Any]:
    ws = copy.deepcopy(TUNING)
    ws["tuning"]["config"] = config
    return ws


@pytest.mark.skipif(not FALCON.is_file(), reason=f"Kaito's examples are not at {KAITO_EXAMPLES}")
async def test_kaitos_falcon_example_naming_the_qlora_template_is_admitted(
    operator_webhook: WebhookServer, workspace_crd: Cluster, namespace: str
) -> None:
    doc = yaml.safe_load(FALCON.read_text())
    assert doc["tuning"]["config"] == "qlora-params-template"
    assert await apply(workspace_crd, namespace, doc) == "admitted"


async def test_only_the_template_names_are_looked_up_in_the_operator_namespace(
    operator_webhook: WebhookServer, workspace_crd: Cluster, namespace: str
) -> None:
    assert await apply(workspace_crd, namespace, tuning("lora-params-template")) == "admitted"
    # my-qlora-params exists in the operator's namespace too, but is no public default.
    out = await apply(workspace_crd, namespace, tuning("my-qlora-params"))
    assert f"ConfigMap 'my-qlora-params' not found in namespace {namespace!r}" in out
    phi = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": "phi"},
        "resource": {"instanceType": "Standard_NC6s_v3", "labelSelector": {"matchLabels": {"a": "phi"}}},
        "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}, "config": "inference-params-template"},
    }
    assert await apply(workspace_crd, namespace, phi) == "admitted"


async def test_a_users_own_configmap_of_a_template_name_is_judged_as_theirs(
    operator_webhook: WebhookServer, workspace_crd: Cluster, namespace: str
) -> None:
    mine = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "qlora-params-template"},
        "data": {"wrong-key.yaml": ""},
    }
    assert await apply(workspace_crd, namespace, mine) == "admitted"
    out = await apply(workspace_crd, namespace, tuning("qlora-params-template"))
    assert "ConfigMap 'qlora-params-template' has no training_config.yaml key" in out
