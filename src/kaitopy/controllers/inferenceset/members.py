"""Member Workspaces of an InferenceSet: their names, labels, desired form and observed facts.
Pure functions of plain objects: no I/O."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kaitopy.api.constants import GROUP, STORAGE_VERSION, InferenceReady
from kaitopy.runtime.objects import thaw

SET_LABEL = "kaito.sh/inferenceset"
TEMPLATE_HASH = "kaito.sh/inferenceset-template-hash"


@dataclass(frozen=True)
class Member:
    """What the decision needs to know about one member Workspace."""

    name: str
    ready: bool
    deleting: bool
    current: bool
    """Made from the set's current template."""
    nodes: int
    """GPU nodes it needs (its status.targetNodeCount, 1 until the controller has planned it)."""


def member_name(set_name: str, index: int) -> str:
    return f"{set_name}-{index}"


def template_hash(spec: Mapping[str, Any]) -> str:
    """A short digest of the member template and label selector: members carrying another digest
    are outdated and replaced under the update strategy."""
    # thaw: objects from the cache are frozen views, which json cannot encode.
    basis = thaw({"template": spec.get("template"), "labelSelector": spec.get("labelSelector")})
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]


def observe(ws: Mapping[str, Any], current_hash: str) -> Member:
    md = ws.get("metadata") or {}
    status = ws.get("status") or {}
    ready = any(
        c.get("type") == InferenceReady and c.get("status") == "True" for c in status.get("conditions") or ()
    )
    return Member(
        name=str(md.get("name", "")),
        ready=ready,
        deleting=bool(md.get("deletionTimestamp")),
        current=(md.get("annotations") or {}).get(TEMPLATE_HASH) == current_hash,
        nodes=max(1, int(status.get("targetNodeCount") or 1)),
    )


def desired_member(inference_set: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The member Workspace `name`, as the set's template describes it (without owner reference)."""
    spec = inference_set["spec"]
    template = spec["template"]
    set_md = inference_set["metadata"]
    tmd = template.get("metadata") or {}
    resource: dict[str, Any] = {"labelSelector": spec["labelSelector"]}
    res = template.get("resource") or {}
    if res.get("instanceType"):
        resource["instanceType"] = res["instanceType"]
    if res.get("partition"):
        resource["partition"] = res["partition"]
    return {
        "apiVersion": f"{GROUP}/{STORAGE_VERSION}",
        "kind": "Workspace",
        "metadata": {
            "name": name,
            "namespace": set_md["namespace"],
            "labels": {**(tmd.get("labels") or {}), SET_LABEL: set_md["name"]},
            "annotations": {**(tmd.get("annotations") or {}), TEMPLATE_HASH: template_hash(spec)},
        },
        "resource": resource,
        "inference": template["inference"],
    }


def pod_selector(member_names: list[str], set_name: str) -> str:
    """The members' model pods as a label selector string (the scale subresource's selector, which an
    HPA reads pod metrics with). Pods carry kaito.sh/workspace=<member>; with no members, a selector
    that matches nothing."""
    if not member_names:
        return f"{SET_LABEL}={set_name}"
    return f"kaito.sh/workspace in ({','.join(sorted(member_names))})"
