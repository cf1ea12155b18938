"""The Workspace and InferenceSet CRDs, generated from the pydantic models.

pydantic's JSON Schema is close to what Kubernetes wants but not structural: it uses `$ref`,
`anyOf` with null for optional fields and titles. `structural()` rewrites it: references inlined,
optionals collapsed to their type, titles dropped, `None` defaults dropped; field docstrings become
descriptions and the `x-kubernetes-*` keys from `json_schema_extra` pass through.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from kaitopy.api.constants import (
    GROUP,
    INFERENCESET_KIND,
    INFERENCESET_PLURAL,
    INFERENCESET_SHORT_NAMES,
    INFERENCESET_SINGULAR,
    SERVED_VERSIONS,
    STORAGE_VERSION,
    UNSERVED_KINDS,
    WORKSPACE_KIND,
    WORKSPACE_PLURAL,
    WORKSPACE_SHORT_NAMES,
    WORKSPACE_SINGULAR,
    InferenceReady,
    JobStarted,
    ResourceReady,
    WorkspaceSucceeded,
)
from kaitopy.api.inferenceset import InferenceSet
from kaitopy.api.workspace import ApiModel, Workspace

_DROP = {"title", "$defs"}
_OBJECT_META_FIELDS = {"apiVersion", "kind", "metadata"}


def structural(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A structural OpenAPI v3 schema from a pydantic JSON Schema."""
    defs = defs if defs is not None else schema.get("$defs", {})
    node = dict(schema)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        # Keys next to the reference (the field's description, rules) win over the target's.
        node = {**target, **node}
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot make a structural schema of a union: {options}")
        inner = structural(options[0], defs)
        node = {**inner, **{k: v for k, v in node.items() if k not in inner or k == "description"}}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or (key == "default" and value is None):
            continue
        if key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = structural(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = structural(value, defs)
            # `True` (dict[str, Any]) is expressed by x-kubernetes-preserve-unknown-fields instead.
        else:
            out[key] = copy.deepcopy(value)
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out["type"] = "object"
        out.pop("additionalProperties", None)
    if "properties" in out:
        out.setdefault("type", "object")
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "description" in out:
        out["description"] = " ".join(str(out["description"]).split())
    return out


def workspace_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the Workspace CRD."""
    return object_schema(Workspace)


def object_schema(model: type[ApiModel]) -> dict[str, Any]:
    """The openAPIV3Schema of a top-level object model (apiVersion/kind/metadata as Kubernetes has them)."""
    schema = structural(model.model_json_schema(by_alias=True, mode="validation"))
    props = schema["properties"]
    for name in _OBJECT_META_FIELDS:
        props.pop(name, None)
    schema["properties"] = {
        "apiVersion": {
            "type": "string",
            "description": "The versioned schema of this representation of an object.",
        },
        "kind": {"type": "string", "description": "The REST resource this object represents."},
        "metadata": {"type": "object"},
        **props,
    }
    schema.pop("x-kubernetes-preserve-unknown-fields", None)
    return schema


def _condition_column(name: str, type_: str) -> dict[str, str]:
    return {
        "name": name,
        "type": "string",
        "jsonPath": f'.status.conditions[?(@.type=="{type_}")].status',
        "description": f"Status of the {type_} condition.",
    }


def printer_columns(version: str) -> list[dict[str, str]]:
    columns = [
        {
            "name": "Instance",
            "type": "string",
            "jsonPath": ".resource.instanceType",
            "description": "GPU instance type.",
        },
        _condition_column("ResourceReady", ResourceReady),
        _condition_column("InferenceReady", InferenceReady),
        _condition_column("JobStarted", JobStarted),
        _condition_column("WorkspaceSucceeded", WorkspaceSucceeded),
    ]
    if version != "v1alpha1":
        columns += [
            {"name": "State", "type": "string", "jsonPath": ".status.state", "description": "Summary state."},
            {
                "name": "TargetNodeCount",
                "type": "integer",
                "jsonPath": ".status.targetNodeCount",
                "description": "GPU nodes the workload needs.",
            },
        ]
    columns.append({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    return columns


def workspace_crd() -> dict[str, Any]:
    """The CustomResourceDefinition of workspaces.kaito.sh: both versions served with the same
    schema (no conversion needed), v1beta1 stored."""
    schema = workspace_schema()
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{WORKSPACE_PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": WORKSPACE_KIND,
                "listKind": f"{WORKSPACE_KIND}List",
                "plural": WORKSPACE_PLURAL,
                "singular": WORKSPACE_SINGULAR,
                "shortNames": list(WORKSPACE_SHORT_NAMES),
                "categories": ["kaito"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": version == STORAGE_VERSION,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": printer_columns(version),
                    "schema": {"openAPIV3Schema": copy.deepcopy(schema)},
                }
                for version in SERVED_VERSIONS
            ],
        },
    }


def inferenceset_printer_columns() -> list[dict[str, str]]:
    return [
        {
            "name": "Replicas",
            "type": "integer",
            "jsonPath": ".spec.replicas",
            "description": "Desired members.",
        },
        {
            "name": "ReadyReplicas",
            "type": "integer",
            "jsonPath": ".status.readyReplicas",
            "description": "Members serving.",
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def inferenceset_crd() -> dict[str, Any]:
    """The CustomResourceDefinition of inferencesets.kaito.sh: v1beta1 only (as Kaito serves it),
    with the status and scale subresources."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{INFERENCESET_PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": INFERENCESET_KIND,
                "listKind": f"{INFERENCESET_KIND}List",
                "plural": INFERENCESET_PLURAL,
                "singular": INFERENCESET_SINGULAR,
                "shortNames": list(INFERENCESET_SHORT_NAMES),
                "categories": ["inferenceset", "kaito"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": STORAGE_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": inferenceset_printer_columns(),
                    "schema": {"openAPIV3Schema": object_schema(InferenceSet)},
                }
            ],
        },
    }


def unserved_crd(kind: str) -> dict[str, Any]:
    """A CRD for a Kaito kind kaitopy does not serve yet: Kaito's names and versions, any body
    (the webhook refuses every create with the reason, so no object is ever stored)."""
    spec = UNSERVED_KINDS[kind]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{spec.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": spec.plural,
                "singular": spec.singular,
                "shortNames": list(spec.short_names),
                "categories": ["kaito"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": version == spec.storage,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": f"Not served by kaitopy yet: {spec.why}. Creates are refused.",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
                for version in spec.versions
            ],
        },
    }


def render(obj: dict[str, Any]) -> str:
    """Stable YAML for a committed manifest."""
    header = "# Generated by hack/gen_manifests.py from the pydantic models. Do not edit.\n"
    return header + yaml.safe_dump(obj, sort_keys=False, width=100, default_flow_style=False)
