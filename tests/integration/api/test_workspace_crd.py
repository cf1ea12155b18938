"""The generated CRD on the real API server: it installs, serves both versions, prints Kaito's
columns, explains its fields and enforces its CEL rules."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kaitopy.api import messages
from tests.integration.api.conftest import edit, example_docs, kubectl_apply, phi3
from tests.support.cluster import Cluster


def _apply_ok(cluster: Cluster, namespace: str, *docs: dict[str, Any]) -> None:
    proc = kubectl_apply(cluster, namespace, *docs)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(("name", "docs"), example_docs(), ids=[n for n, _ in example_docs()])
def test_examples_apply(
    workspace_crd: Cluster, namespace: str, name: str, docs: list[dict[str, Any]]
) -> None:
    _apply_ok(workspace_crd, namespace, *docs)


def test_get_wk_shows_kaito_columns(workspace_crd: Cluster, namespace: str) -> None:
    _apply_ok(workspace_crd, namespace, phi3("phi"))
    status = {
        "status": {
            "state": "Ready",
            "targetNodeCount": 1,
            "workerNodes": ["n1"],
            "conditions": [
                {
                    "type": t,
                    "status": s,
                    "reason": "Test",
                    "message": "",
                    "lastTransitionTime": "2025-01-01T00:00:00Z",
                }
                for t, s in (("ResourceReady", "True"), ("InferenceReady", "False"))
            ],
        }
    }
    workspace_crd.kubectl(
        "-n",
        namespace,
        "patch",
        "wk",
        "phi",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    out = workspace_crd.kubectl("-n", namespace, "get", "wk").splitlines()
    assert out[0].split() == [
        "NAME",
        "INSTANCE",
        "RESOURCEREADY",
        "INFERENCEREADY",
        "JOBSTARTED",
        "WORKSPACESUCCEEDED",
        "STATE",
        "TARGETNODECOUNT",
        "AGE",
    ]
    assert out[1].split()[:3] == ["phi", "Standard_NC6s_v3", "True"]
    assert out[1].split()[3] == "False" and "Ready" in out[1].split()
    alpha = workspace_crd.kubectl("-n", namespace, "get", "workspaces.v1alpha1.kaito.sh").splitlines()
    assert "STATE" not in alpha[0] and "WORKSPACESUCCEEDED" in alpha[0]
    assert workspace_crd.kubectl("-n", namespace, "get", "wks", "-o", "name") == "workspace.kaito.sh/phi\n"


def test_status_is_a_subresource(workspace_crd: Cluster, namespace: str) -> None:
    doc = phi3("sub")
    doc["status"] = {"state": "Ready"}
    _apply_ok(workspace_crd, namespace, doc)
    got = json.loads(workspace_crd.kubectl("-n", namespace, "get", "wk", "sub", "-o", "json"))
    assert "status" not in got or "state" not in got["status"]
    assert got["resource"]["count"] == 1  # defaulted by the schema
    assert got["inference"]["preset"]["accessMode"] == "public"


def test_explain_is_useful(workspace_crd: Cluster) -> None:
    out = workspace_crd.kubectl("explain", "workspace.inference.adapters")
    assert "at most 10" in out
    assert "strength" in out and "source" in out
    out = workspace_crd.kubectl("explain", "workspace.resource.instanceType")
    assert "Immutable" in out


BAD_CREATES = [
    ("both", lambda: edit(phi3(), tuning={"preset": {"name": "phi-4"}}), messages.EXACTLY_ONE_OF),
    ("neither", lambda: edit(phi3(), inference=None), messages.EXACTLY_ONE_OF),
    (
        "preset-and-template",
        lambda: edit(phi3(), inference={"preset": {"name": "phi-4"}, "template": {"spec": {}}}),
        messages.PRESET_AND_TEMPLATE,
    ),
    ("no-preset-no-template", lambda: edit(phi3(), inference={"config": "x"}), messages.PRESET_OR_TEMPLATE),
    (
        "duplicate-adapters",
        lambda: edit(
            phi3(),
            inference={
                "preset": {"name": "phi-4"},
                "adapters": [
                    {"source": {"name": "a", "image": "x"}},
                    {"source": {"name": "a", "image": "y"}},
                ],
            },
        ),
        messages.ADAPTER_NAMES_UNIQUE,
    ),
    (
        "strength",
        lambda: edit(
            phi3(),
            inference={
                "preset": {"name": "phi-4"},
                "adapters": [{"source": {"name": "a"}, "strength": "1.5"}],
            },
        ),
        messages.ADAPTER_STRENGTH,
    ),
    (
        "too-many-adapters",
        lambda: edit(
            phi3(),
            inference={
                "preset": {"name": "phi-4"},
                "adapters": [{"source": {"name": f"a{i}", "image": "x"}} for i in range(11)],
            },
        ),
        "must have at most 10 items",
    ),
]


@pytest.mark.parametrize(("case", "build", "message"), BAD_CREATES, ids=[c for c, _, _ in BAD_CREATES])
def test_schema_refuses_bad_creates(
    workspace_crd: Cluster, namespace: str, case: str, build: Any, message: str
) -> None:
    proc = kubectl_apply(workspace_crd, namespace, build())
    assert proc.returncode != 0, f"{case} was accepted"
    assert message in proc.stderr
    _no_noise(proc.stderr)


def _no_noise(stderr: str) -> None:
    # The API server names the field (not "<nil>") and says Forbidden/Required rather than
    # echoing the field's type as if it were the bad value ('Invalid value: "object"'). The API
    # server's own note that CEL was skipped after a structural error is not one of our rules.
    ours = "\n".join(line for line in stderr.splitlines() if "validation rules were not checked" not in line)
    assert "<nil>" not in ours, stderr
    for kind in ("object", "string", "array"):
        assert f'Invalid value: "{kind}"' not in ours, stderr


def test_schema_names_the_field_and_echoes_the_bad_strength(workspace_crd: Cluster, namespace: str) -> None:
    both = kubectl_apply(workspace_crd, namespace, edit(phi3(), tuning={"preset": {"name": "phi-4"}}))
    assert f"tuning: Forbidden: {messages.EXACTLY_ONE_OF}" in both.stderr, both.stderr
    neither = kubectl_apply(workspace_crd, namespace, edit(phi3(), inference=None))
    assert f"inference: Required value: {messages.EXACTLY_ONE_OF}" in neither.stderr, neither.stderr
    strength = kubectl_apply(
        workspace_crd,
        namespace,
        edit(
            phi3(),
            inference={
                "preset": {"name": "phi-4"},
                "adapters": [{"source": {"name": "a"}, "strength": "1.5"}],
            },
        ),
    )
    assert "inference.adapters[0].strength: Forbidden: " in strength.stderr, strength.stderr
    assert '; got "1.5"' in strength.stderr, strength.stderr


BAD_UPDATES = [
    (
        "instanceType",
        lambda d: d["resource"].update(instanceType="Standard_NC24ads_A100_v4"),
        messages.IMMUTABLE_INSTANCE_TYPE,
    ),
    (
        "labelSelector",
        lambda d: d["resource"].update(labelSelector={"matchLabels": {"zone": "b"}}),
        messages.IMMUTABLE_LABEL_SELECTOR,
    ),
    ("count", lambda d: d["resource"].update(count=2), messages.IMMUTABLE_COUNT),
    ("preset", lambda d: d["inference"]["preset"].update(name="phi-4"), messages.IMMUTABLE_INFERENCE_PRESET),
    (
        "toggle",
        lambda d: d.update(inference=None, tuning={"preset": {"name": "phi-4"}}),
        messages.NO_TOGGLE,
    ),
]


@pytest.mark.parametrize(("case", "change", "message"), BAD_UPDATES, ids=[c for c, _, _ in BAD_UPDATES])
def test_schema_refuses_immutable_changes(
    workspace_crd: Cluster, namespace: str, case: str, change: Any, message: str
) -> None:
    doc = phi3("imm")
    _apply_ok(workspace_crd, namespace, doc)
    change(doc)
    doc = {k: v for k, v in doc.items() if v is not None}
    # replace, not apply: apply would keep a removed key it did not set itself
    proc = kubectl_apply(workspace_crd, namespace, doc, verb="replace")
    assert proc.returncode != 0, f"changing {case} was accepted"
    assert message in proc.stderr
    _no_noise(proc.stderr)


def test_adapters_may_change(workspace_crd: Cluster, namespace: str) -> None:
    doc = phi3("adapt")
    _apply_ok(workspace_crd, namespace, doc)
    doc["inference"]["adapters"] = [{"source": {"name": "a", "image": "x"}, "strength": "0.3"}]
    _apply_ok(workspace_crd, namespace, doc)
    doc["inference"]["adapters"] = []
    _apply_ok(workspace_crd, namespace, doc)
