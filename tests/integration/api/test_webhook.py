"""The admission webhook on the real API server, registered with a loopback URL: every bad case is
refused at `kubectl apply` with its message, and every example is admitted."""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import datetime
import json
import socket
import ssl
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes_asyncio.client.api_client import ApiClient

from kaitopy.api import messages
from kaitopy.runtime import Client, kinds
from kaitopy.webhooks.server import VALIDATING_WEBHOOK_CONFIGURATION, WebhookServer, WebhookSettings
from tests.integration.api.conftest import edit, example_docs, kubectl_apply, phi3, tuning
from tests.support.cluster import Cluster

REPO = Path(__file__).resolve().parents[3]


# kubectl runs in a thread: the webhook is served by this test's own event loop, which must keep
# running while the API server calls it.
async def _refused(cluster: Cluster, namespace: str, doc: dict[str, Any], *, verb: str = "apply") -> str:
    proc = await asyncio.to_thread(kubectl_apply, cluster, namespace, doc, verb=verb)
    assert proc.returncode != 0, f"accepted: {json.dumps(doc)}"
    return proc.stderr


async def _admitted(cluster: Cluster, namespace: str, *docs: dict[str, Any], verb: str = "apply") -> None:
    proc = await asyncio.to_thread(kubectl_apply, cluster, namespace, *docs, verb=verb)
    assert proc.returncode == 0, proc.stderr


async def test_registration_uses_a_loopback_url_and_our_ca(
    webhook: WebhookServer, api_client: ApiClient
) -> None:
    client = Client(api_client)
    config = await client.get(VALIDATING_WEBHOOK_CONFIGURATION, webhook.settings.configuration_name)
    create, update = config["webhooks"]
    assert create["clientConfig"]["url"] == f"https://127.0.0.1:{webhook.port}/validate"
    assert (create["failurePolicy"], update["failurePolicy"]) == ("Fail", "Fail")
    assert "matchConditions" not in create and update["matchConditions"][0]["name"] == "spec-changed"
    assert create["timeoutSeconds"] == 10
    assert create["rules"][0]["operations"] == ["CREATE"] and update["rules"][0]["operations"] == ["UPDATE"]
    ca = base64.b64decode(create["clientConfig"]["caBundle"])
    # The CA the API server trusts verifies the certificate the server presents.
    ctx = ssl.create_default_context(cadata=ca.decode())
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"https://127.0.0.1:{webhook.port}/healthz", ssl=ctx) as resp,
    ):
        assert resp.status == 200
    secret = await client.get(kinds.SECRET, webhook.settings.secret_name, webhook.settings.namespace)
    assert base64.b64decode(secret["data"]["ca.crt"]) == ca


@pytest.mark.parametrize(("name", "docs"), example_docs(), ids=[n for n, _ in example_docs()])
async def test_every_example_is_admitted(
    webhook: WebhookServer, workspace_crd: Cluster, namespace: str, name: str, docs: list[dict[str, Any]]
) -> None:
    await _admitted(workspace_crd, namespace, *docs)


def _with(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node.setdefault(p, {})
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return out


BAD = [
    (
        "unknown-preset",
        _with(phi3(), "inference.preset.name", "phi-3-mini-4k-instuct"),
        "did you mean phi-3-mini-4k-instruct",
    ),
    (
        "unknown-instance-type",
        _with(phi3(), "resource.instanceType", "Standard_NC6"),
        "unknown instance type 'Standard_NC6' (did you mean Standard_NC6s_v3",
    ),
    (
        "gpu-too-small",
        _with(phi3(), "inference.preset.name", "phi-3-medium-4k-instruct"),
        "phi-3-medium-4k-instruct needs 26.4 GiB of GPU memory",
    ),
    (
        "gpu-too-small-lists-fits",
        _with(phi3(), "inference.preset.name", "phi-3-medium-4k-instruct"),
        "instance types that fit: ",
    ),
    (
        "runtime-annotation",
        _with(phi3(), "metadata.annotations", {"kaito.sh/runtime": "vllm2"}),
        "metadata.annotations[kaito.sh/runtime]: 'vllm2' is not a runtime; use one of vllm, transformers",
    ),
    (
        "hugging-face-id-outside-the-catalog",
        _with(phi3(), "inference.preset.name", "Qwen/Qwen3-8B"),
        "is a Hugging Face model id outside kaitopy's catalog",
    ),
    ("both", edit(phi3(), tuning=tuning()["tuning"]), messages.EXACTLY_ONE_OF),
    ("neither", edit(phi3(), inference=None), messages.EXACTLY_ONE_OF),
    ("preset-and-template", _with(phi3(), "inference.template", {"spec": {}}), messages.PRESET_AND_TEMPLATE),
    (
        "adapters-too-many",
        _with(
            phi3(), "inference.adapters", [{"source": {"name": f"a{i}", "image": "img"}} for i in range(11)]
        ),
        "must have at most 10 items",
    ),
    (
        "adapters-duplicate",
        _with(
            phi3(),
            "inference.adapters",
            [{"source": {"name": "a", "image": "i1"}}, {"source": {"name": "a", "image": "i2"}}],
        ),
        messages.ADAPTER_NAMES_UNIQUE,
    ),
    (
        "adapter-without-source",
        _with(phi3(), "inference.adapters", [{"source": {"name": "a"}}]),
        "inference.adapters[0].source needs image, urls or volumeSource",
    ),
    (
        "adapter-strength",
        _with(phi3(), "inference.adapters", [{"source": {"name": "a", "image": "i"}, "strength": "1.5"}]),
        messages.ADAPTER_STRENGTH,
    ),
    (
        "adapters-unsupported-model",
        edit(
            phi3(),
            resource={
                "instanceType": "Standard_NC24ads_A100_v4",
                "labelSelector": {"matchLabels": {"a": "b"}},
            },
            inference={
                "preset": {"name": "gpt-oss-20b"},
                "adapters": [{"source": {"name": "a", "image": "i"}}],
            },
        ),
        "gpt-oss-20b does not support LoRA adapters",
    ),
    (
        "gated-without-secret",
        edit(
            phi3(),
            resource={
                "instanceType": "Standard_NC24ads_A100_v4",
                "labelSelector": {"matchLabels": {"a": "b"}},
            },
            inference={"preset": {"name": "llama-3.1-8b-instruct"}},
        ),
        "inference.preset.presetOptions.modelAccessSecret is required",
    ),
    ("tuning-method", _with(tuning(), "tuning.method", "full"), 'Unsupported value: "full"'),
    ("tuning-no-preset", _with(tuning(), "tuning.preset", None), "tuning.preset is required"),
    (
        "tuning-untunable-model",
        _with(tuning(), "tuning.preset", {"name": "gpt-oss-20b"}),
        "gpt-oss-20b cannot be fine-tuned; models that can:",
    ),
    ("tuning-no-input", _with(tuning(), "tuning.input", None), messages.TUNING_INPUT_ONE_OF),
    (
        "tuning-two-inputs",
        _with(tuning(), "tuning.input", {"urls": ["https://example.com/d"], "image": "data:1"}),
        messages.TUNING_INPUT_ONE_OF,
    ),
    ("tuning-no-output", _with(tuning(), "tuning.output", None), messages.TUNING_OUTPUT_ONE_OF),
    (
        "tuning-output-no-secret",
        _with(tuning(), "tuning.output", {"image": "reg/img:1"}),
        messages.TUNING_OUTPUT_PUSH_SECRET,
    ),
    (
        "tuning-url-scheme",
        _with(tuning(), "tuning.input", {"urls": ["ftp://example.com/data"]}),
        "tuning.input.urls[0] 'ftp://example.com/data' must be an http(s) URL",
    ),
    (
        "tuning-url-loopback",
        _with(tuning(), "tuning.input", {"urls": ["http://127.0.0.1:8080/data"]}),
        "points at 127.0.0.1, a loopback address",
    ),
    (
        "tuning-url-metadata",
        _with(tuning(), "tuning.input", {"urls": ["http://169.254.169.254/latest/meta-data"]}),
        "points at 169.254.169.254, a link-local address",
    ),
    (
        "tuning-url-private",
        _with(tuning(), "tuning.input", {"urls": ["https://10.0.0.5/data"]}),
        "points at 10.0.0.5, a private address",
    ),
    (
        "tuning-url-cluster-service",
        _with(tuning(), "tuning.input", {"urls": ["http://minio.storage.svc.cluster.local/data"]}),
        "internal to the cluster",
    ),
    (
        "tuning-gpu-too-small",
        edit(
            tuning(),
            resource={"instanceType": "Standard_NC6s_v3", "labelSelector": {"matchLabels": {"a": "b"}}},
            tuning={**tuning()["tuning"], "preset": {"name": "phi-3-medium-4k-instruct"}},
        ),
        "qlora tuning of phi-3-medium-4k-instruct needs",
    ),
    (
        "config-missing",
        _with(phi3(), "inference.config", "no-such-config"),
        "ConfigMap 'no-such-config' not found",
    ),
    (
        "config-missing-key",
        _with(phi3(), "inference.config", "wrong-key"),
        "has no inference_config.yaml key; put the settings under inference_config.yaml",
    ),
    (
        "tuning-config-missing-key",
        _with(tuning(), "tuning.config", "wrong-key"),
        "has no training_config.yaml key",
    ),
]


@pytest.mark.parametrize(("case", "doc", "message"), BAD, ids=[c for c, _, _ in BAD])
async def test_bad_create_is_refused_with_its_message(
    webhook: WebhookServer,
    workspace_crd: Cluster,
    namespace: str,
    case: str,
    doc: dict[str, Any],
    message: str,
) -> None:
    await _admitted(
        workspace_crd,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "wrong-key"},
            "data": {"other.yaml": "a: 1", "aws_secret_access_key": "hunter2-not-for-your-eyes"},
        },
    )
    stderr = await _refused(workspace_crd, namespace, doc)
    assert message in stderr, stderr
    # A ConfigMap may hold credentials: the refusal names it, never its keys or values.
    for content in ("hunter2", "aws_secret_access_key", "other.yaml"):
        assert content not in stderr, stderr


async def test_max_model_len_from_the_config_decides_the_fit(
    webhook: WebhookServer, workspace_crd: Cluster, namespace: str
) -> None:
    # Unset, the 128k model is admitted on its weights on a V100 (the engine fits the context);
    # asked for its full context, it is refused with the context that fits; asked for that, admitted.
    unset = _with(phi3("unset"), "inference.preset.name", "phi-3-mini-128k-instruct")
    await _admitted(workspace_crd, namespace, unset)
    full = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "full"},
        "data": {"inference_config.yaml": "vllm:\n  max-model-len: 131072\n"},
    }
    await _admitted(workspace_crd, namespace, full)
    long_ctx = _with(phi3("long"), "inference.preset.name", "phi-3-mini-128k-instruct")
    refusal = await _refused(workspace_crd, namespace, _with(long_ctx, "inference.config", "full"))
    assert "or set max_model_len to 16384 or less" in refusal
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "short"},
        "data": {"inference_config.yaml": "vllm:\n  max-model-len: 16384\n"},
    }
    await _admitted(workspace_crd, namespace, config, _with(long_ctx, "inference.config", "short"))


IMMUTABLE = [
    ("instanceType", "resource.instanceType", "Standard_NC24ads_A100_v4", messages.IMMUTABLE_INSTANCE_TYPE),
    (
        "labelSelector",
        "resource.labelSelector",
        {"matchLabels": {"zone": "b"}},
        messages.IMMUTABLE_LABEL_SELECTOR,
    ),
    ("count", "resource.count", 2, messages.IMMUTABLE_COUNT),
    ("preset", "inference.preset.name", "phi-3.5-mini-instruct", messages.IMMUTABLE_INFERENCE_PRESET),
]


@pytest.mark.parametrize(("case", "path", "value", "message"), IMMUTABLE, ids=[c for c, *_ in IMMUTABLE])
async def test_immutable_fields(
    webhook: WebhookServer,
    workspace_crd: Cluster,
    namespace: str,
    case: str,
    path: str,
    value: Any,
    message: str,
) -> None:
    doc = phi3("imm")
    await _admitted(workspace_crd, namespace, doc)
    assert message in await _refused(workspace_crd, namespace, _with(doc, path, value), verb="replace")


async def test_tuning_method_and_toggle_are_immutable(
    webhook: WebhookServer, workspace_crd: Cluster, namespace: str
) -> None:
    doc = tuning("t")
    await _admitted(workspace_crd, namespace, doc)
    assert messages.IMMUTABLE_TUNING_METHOD in await _refused(
        workspace_crd, namespace, _with(doc, "tuning.method", "lora"), verb="replace"
    )
    assert messages.IMMUTABLE_TUNING_PRESET in await _refused(
        workspace_crd, namespace, _with(doc, "tuning.preset.name", "phi-3-mini-128k-instruct"), verb="replace"
    )
    toggled = edit(doc, tuning=None, inference={"preset": {"name": "phi-3-mini-4k-instruct"}})
    assert messages.NO_TOGGLE in await _refused(workspace_crd, namespace, toggled, verb="replace")


async def test_adapters_may_change_but_stay_valid(
    webhook: WebhookServer, workspace_crd: Cluster, namespace: str
) -> None:
    doc = phi3("ad")
    await _admitted(workspace_crd, namespace, doc)
    doc = _with(doc, "inference.adapters", [{"source": {"name": "a", "image": "img"}, "strength": "0.4"}])
    await _admitted(workspace_crd, namespace, doc)
    bad = _with(doc, "inference.adapters", [{"source": {"name": "a", "urls": ["http://localhost/a"]}}])
    assert "inference.adapters[0].source.urls[0] 'http://localhost/a' points at localhost" in await _refused(
        workspace_crd, namespace, bad
    )


async def test_certificate_renewal_swaps_the_served_certificate(
    webhook: WebhookServer, workspace_crd: Cluster, namespace: str, api_client: ApiClient
) -> None:
    client = Client(api_client)
    before = webhook._bundle
    assert before is not None
    # Renew as if the certificate were about to expire: a new CA joins the bundle ahead of the old.
    webhook.settings = dataclasses.replace(webhook.settings, renew_before=datetime.timedelta(days=365))
    await webhook._refresh()
    after = webhook._bundle
    assert after is not None and after.cert_pem != before.cert_pem
    assert after.ca_pem.endswith(
        before.ca_pem.split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
    )
    config = await client.get(VALIDATING_WEBHOOK_CONFIGURATION, webhook.settings.configuration_name)
    assert base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"]) == after.ca_pem
    # The API server still reaches the webhook: a bad workspace is still refused by it.
    assert "did you mean" in await _refused(
        workspace_crd, namespace, _with(phi3(), "inference.preset.name", "phi-3-mini-4k-instuct")
    )


async def test_metadata_updates_pass_after_the_config_map_is_gone(
    webhook: WebhookServer, workspace_crd: Cluster, namespace: str
) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg"},
        "data": {"inference_config.yaml": "vllm: {}\n"},
    }
    await _admitted(workspace_crd, namespace, config, _with(phi3("meta"), "inference.config", "cfg"))
    await asyncio.to_thread(workspace_crd.kubectl, "-n", namespace, "delete", "configmap", "cfg")
    # A controller adding a finalizer is not blocked by the now-missing ConfigMap...
    patch = json.dumps({"metadata": {"finalizers": ["workspace.kaito.sh/finalizer"]}})
    await asyncio.to_thread(
        workspace_crd.kubectl, "-n", namespace, "patch", "wk", "meta", "--type=merge", "-p", patch
    )
    # ...but a change of the spec is checked again and refused.
    changed = _with(phi3("meta"), "inference.config", "cfg")
    changed["inference"]["adapters"] = [{"source": {"name": "a", "image": "img"}}]
    assert "ConfigMap 'cfg' not found" in await _refused(workspace_crd, namespace, changed)
    await asyncio.to_thread(
        workspace_crd.kubectl,
        "-n",
        namespace,
        "patch",
        "wk",
        "meta",
        "--type=json",
        "-p",
        '[{"op": "remove", "path": "/metadata/finalizers"}]',
    )


async def test_shipped_configuration_gets_only_its_ca_bundle(
    workspace_crd: Cluster, api_client: ApiClient, namespace: str
) -> None:
    """Installed from the manifests (--no-install-webhook-configuration), the webhook creates no
    configuration: it patches the caBundle into the shipped one and leaves the rest as shipped."""
    client = Client(api_client)
    shipped = next(
        d
        for d in yaml.safe_load_all((REPO / "manifests" / "base" / "webhook.yaml").read_text())
        if d["kind"] == "ValidatingWebhookConfiguration"
    )
    with socket.socket() as s:  # the URL must name the port before the server binds it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = f"kaitopy-shipped-{uuid.uuid4().hex[:8]}"
    settings = WebhookSettings(
        host="127.0.0.1",
        port=port,
        namespace=namespace,
        url=f"https://127.0.0.1:{port}/validate",
        service_name=None,
        configuration_name=name,
        manage_configuration=False,
    )
    with pytest.raises(RuntimeError, match=f"ValidatingWebhookConfiguration {name} not found"):
        async with WebhookServer(client, settings):
            pass
    assert await client.get_or_none(VALIDATING_WEBHOOK_CONFIGURATION, name) is None  # not created
    shipped["metadata"]["name"] = name
    for hook in shipped["webhooks"]:
        hook["clientConfig"] = {"url": settings.url}
        hook["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    before = await client.create(VALIDATING_WEBHOOK_CONFIGURATION, shipped)
    try:
        async with WebhookServer(client, settings) as server:
            after = await client.get(VALIDATING_WEBHOOK_CONFIGURATION, name)
            ca = after["webhooks"][0]["clientConfig"]["caBundle"]
            assert ca == server.client_config()["caBundle"]
            for hook in after["webhooks"]:
                assert hook["clientConfig"].pop("caBundle") == ca
            assert after["webhooks"] == before["webhooks"]  # nothing else touched
            # The shipped configuration is live: creates, and spec updates, are checked.
            bad = _with(phi3(), "inference.config", "no-such-config")
            assert "ConfigMap 'no-such-config' not found" in await _refused(workspace_crd, namespace, bad)
            await _admitted(workspace_crd, namespace, phi3())
            stderr = await _refused(workspace_crd, namespace, bad)  # an update of the same "ws"
            assert "ConfigMap 'no-such-config' not found" in stderr
            # A restart with the same certificate writes nothing (the patch is skipped).
            rv = after["metadata"]["resourceVersion"]
            await server._refresh()
            current = await client.get(VALIDATING_WEBHOOK_CONFIGURATION, name)
            assert current["metadata"]["resourceVersion"] == rv
    finally:
        await client.delete(VALIDATING_WEBHOOK_CONFIGURATION, name)
