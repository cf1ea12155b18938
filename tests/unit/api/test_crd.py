"""The generated CRD: structural, complete, and the committed YAML is current."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

from kaitopy.api.crd import workspace_crd

REPO = Path(__file__).resolve().parents[3]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_manifests", REPO / "hack" / "gen_manifests.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_manifests_are_current() -> None:
    gen = _generator()
    for path, text in gen.expected().items():
        assert path.exists(), f"{path} is missing: run `make manifests`"
        assert path.read_text() == text, f"{path} is stale: run `make manifests` and commit the result"
    assert gen.main(["--check"]) == 0


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, sub in (node.get("properties") or {}).items():
            out += _walk(sub, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            out += _walk(node["items"], f"{path}[]")
    return out


def test_schema_is_structural_and_described() -> None:
    crd = workspace_crd()
    versions = crd["spec"]["versions"]
    assert [v["name"] for v in versions] == ["v1alpha1", "v1beta1"]
    assert [v["storage"] for v in versions] == [False, True]
    assert versions[0]["schema"] == versions[1]["schema"]  # same shape: no conversion needed
    schema = versions[1]["schema"]["openAPIV3Schema"]
    text = json.dumps(schema)
    for forbidden in ('"$ref"', '"anyOf"', '"title"', '"$defs"', '"default": null'):
        assert forbidden not in text
    for path, node in _walk(schema):
        assert "type" in node, f"{path or 'root'} has no type"
        if path and path != ".metadata" and not (path.endswith("[]") and node["type"] != "object"):
            assert node.get("description"), f"{path} has no description"
    assert schema["required"] == ["resource"]
    assert set(schema["properties"]) == {
        "apiVersion",
        "kind",
        "metadata",
        "resource",
        "inference",
        "tuning",
        "status",
    }
    adapters = schema["properties"]["inference"]["properties"]["adapters"]
    assert adapters["maxItems"] == 10
    assert adapters["x-kubernetes-validations"]


def test_names_columns_and_rules() -> None:
    crd = workspace_crd()
    assert crd["spec"]["names"]["shortNames"] == ["wk", "wks"]
    cols = {v["name"]: [c["name"] for c in v["additionalPrinterColumns"]] for v in crd["spec"]["versions"]}
    base = ["Instance", "ResourceReady", "InferenceReady", "JobStarted", "WorkspaceSucceeded"]
    assert cols["v1alpha1"] == [*base, "Age"]
    assert cols["v1beta1"] == [*base, "State", "TargetNodeCount", "Age"]
    root = crd["spec"]["versions"][1]["schema"]["openAPIV3Schema"]
    rules = [r["rule"] for r in root["x-kubernetes-validations"]]
    one_of = {"has(self.inference) || has(self.tuning)", "!(has(self.inference) && has(self.tuning))"}
    assert one_of <= set(rules)
    instance_type = root["properties"]["resource"]["properties"]["instanceType"]
    assert instance_type["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"


def test_api_reference_lists_every_field_with_its_rules() -> None:
    text = (REPO / "docs" / "api-reference.md").read_text()
    schema = workspace_crd()["spec"]["versions"][-1]["schema"]["openAPIV3Schema"]
    walked = [p.lstrip(".") for p, _ in _walk(schema) if p and not p.endswith("[]")]  # "x[]" is x's items
    paths = [p for p in walked if p.split(".")[0] not in ("apiVersion", "kind", "metadata")]
    assert len(paths) > 40
    missing = [p for p in paths if f"| `{p}` |" not in text]
    assert not missing, missing
    assert "rule: inference.adapters[].source.name must be unique" in text
