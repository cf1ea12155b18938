"""The Workspace models read Kaito's YAML as it is and write it back the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kaitopy.api import (
    GROUP,
    STORAGE_VERSION,
    WORKSPACE,
    AdapterSpec,
    InferenceReady,
    Workspace,
)
from kaitopy.runtime.objects import freeze

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

PHI3 = """
apiVersion: kaito.sh/v1beta1
kind: Workspace
metadata:
  name: workspace-phi-3-mini
resource:
  instanceType: "Standard_NC6s_v3"
  labelSelector:
    matchLabels:
      apps: phi-3
inference:
  preset:
    name: phi-3-mini-4k-instruct
  adapters:
    - source:
        name: "phi-3-adapter"
        image: "myregistry.azurecr.io/adapters/phi-3:0.0.1"
      strength: "0.5"
status:
  workerNodes: [n1]
  targetNodeCount: 1
  conditions:
    - type: InferenceReady
      status: "True"
      reason: Ready
      message: ""
      lastTransitionTime: "2025-01-01T00:00:00Z"
"""


def test_kind_constants() -> None:
    assert (GROUP, STORAGE_VERSION) == ("kaito.sh", "v1beta1")
    assert WORKSPACE.api_version == "kaito.sh/v1beta1"
    assert WORKSPACE.path("ns", "w") == "/apis/kaito.sh/v1beta1/namespaces/ns/workspaces/w"


def test_reads_kaito_yaml_into_snake_case_attributes() -> None:
    ws = Workspace.model_validate(yaml.safe_load(PHI3))
    assert ws.name == "workspace-phi-3-mini"
    assert ws.resource.instance_type == "Standard_NC6s_v3"
    assert ws.resource.count == 1
    assert ws.resource.label_selector.match_labels == {"apps": "phi-3"}
    assert ws.inference is not None and ws.inference.preset is not None
    assert ws.preset_name == "phi-3-mini-4k-instruct"
    adapter = ws.inference.adapters[0] if ws.inference.adapters else None
    assert adapter is not None and adapter.source is not None and adapter.strength == "0.5"
    assert ws.status is not None and ws.status.target_node_count == 1
    ready = ws.status.condition(InferenceReady)
    assert ready is not None and ready.status == "True"


def test_round_trips_camel_case() -> None:
    raw = yaml.safe_load(PHI3)
    out = Workspace.model_validate(raw).to_dict()
    assert out["resource"]["labelSelector"] == raw["resource"]["labelSelector"]
    assert out["inference"]["adapters"] == raw["inference"]["adapters"]
    assert out["status"]["workerNodes"] == ["n1"]
    assert "instance_type" not in out["resource"]


def test_populates_by_attribute_name_too() -> None:
    a = AdapterSpec(source={"name": "x", "image": "i"})  # type: ignore[arg-type]
    assert a.strength == "1.0"


@pytest.mark.parametrize("strength", ["1.5", "-0.1", "abc", "2"])
def test_bad_strength_is_refused(strength: str) -> None:
    with pytest.raises(ValidationError, match="strength"):
        AdapterSpec.model_validate({"source": {"name": "x"}, "strength": strength})


def test_label_selector_is_required() -> None:
    with pytest.raises(ValidationError, match="labelSelector"):
        Workspace.model_validate({"resource": {"instanceType": "x"}, "inference": {}})


def test_bad_tuning_method_is_refused() -> None:
    with pytest.raises(ValidationError, match="method"):
        Workspace.model_validate(
            {"resource": {"labelSelector": {}}, "tuning": {"method": "full", "preset": {"name": "phi-4"}}}
        )


def _examples() -> list[Path]:
    return sorted(EXAMPLES.rglob("*.yaml"))


@pytest.mark.parametrize("path", _examples(), ids=lambda p: p.name)
def test_every_example_parses(path: Path) -> None:
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    workspaces = [d for d in docs if d.get("kind") == "Workspace"]
    assert workspaces, f"{path} holds no Workspace"
    for d in workspaces:
        ws = Workspace.model_validate(d)
        assert (ws.inference is None) != (ws.tuning is None)


def test_reads_frozen_cache_objects_and_writes_plain_json() -> None:
    raw = yaml.safe_load((EXAMPLES / "inference" / "kaito_workspace_custom_template.yaml").read_text())
    raw["metadata"]["finalizers"] = ["f"]
    ws = Workspace.model_validate(freeze(raw))
    out = ws.to_dict()
    assert out["inference"]["template"] == raw["inference"]["template"]
    assert out["metadata"]["finalizers"] == ["f"]


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ({"spec": True}, "spec is bool"),
        ({"spec": None}, "spec is NoneType"),
        ({"metadata": 1, "spec": {"containers": [{"name": "m"}]}}, "metadata is int"),
        ({"spec": {"containers": []}}, "spec.containers is missing or empty"),
        ({"metadata": {}}, "spec.containers is missing or empty"),
        ({"spec": {"containers": ["m"]}}, "every entry of spec.containers must be an object"),
    ],
)
def test_a_template_must_be_shaped_like_a_pod_template(template: dict[str, Any], problem: str) -> None:
    # Found by the property test: `template: {spec: true}` was admitted, then crashed the planner.
    body = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": "w"},
        "resource": {"instanceType": "Standard_NC12s_v3", "labelSelector": {"matchLabels": {"a": "b"}}},
        "inference": {"template": template},
    }
    with pytest.raises(ValidationError) as err:
        Workspace.model_validate(body)
    text = str(err.value)
    assert "inference.template" in text and problem in text and "spec.containers" in text
