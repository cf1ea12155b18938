"""Which GPU nodes a workspace runs on, and the NodeClaims that make up the shortfall. Pure.

NodeClaim names are derived from the workspace's UID and a slot number, so creating the claim for
a slot twice — after a restart, or from a stale cache — is an AlreadyExists, never a second node:
the "expectations" of the ReplicaSet controller, made durable by the name itself."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kaitopy.api.nodeclaim import INSTANCE_TYPE_LABEL
from kaitopy.controllers.workspace.plan import (
    GPU_RESOURCE,
    GPU_TAINT_KEY,
    GPU_TAINT_VALUE,
    WORKSPACE_LABEL,
    WORKSPACE_NAMESPACE_LABEL,
)
from kaitopy.runtime.objects import Obj

NODECLASS_REF = {"group": "kaito.sh", "kind": "KaitoNodeClass", "name": "default"}


def nodeclaim_name(workspace_uid: str, slot: int) -> str:
    """A valid AKS agent-pool name (^[a-z][a-z0-9]{0,11}$): 'ws' + 10 hex digits."""
    return "ws" + hashlib.sha256(f"{workspace_uid}/{slot}".encode()).hexdigest()[:10]


def matches(
    labels: Mapping[str, str], match_labels: Mapping[str, str], expressions: Iterable[Mapping[str, Any]]
) -> bool:
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    for e in expressions:
        key, op, values = str(e.get("key")), e.get("operator"), [str(v) for v in e.get("values") or ()]
        present = key in labels
        if op == "In" and (not present or labels[key] not in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def node_ready(node: Obj) -> bool:
    for c in (node.get("status") or {}).get("conditions") or ():
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return False


def gpu_capacity(node: Obj) -> int:
    raw = ((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE, "0")
    try:
        return int(str(raw))
    except ValueError:
        return 0


@dataclass(frozen=True)
class NodeView:
    """The nodes a workspace can use right now."""

    ready: list[str]
    """Ready, schedulable nodes that match the selector and instance type and have GPUs."""

    @property
    def count(self) -> int:
        return len(self.ready)


def usable_nodes(
    nodes: Iterable[Obj],
    match_labels: Mapping[str, str],
    expressions: Iterable[Mapping[str, Any]],
    instance_type: str,
    *,
    owner: tuple[str, str] | None = None,
) -> NodeView:
    """`owner` (name, namespace): the workspace asking. A node provisioned for a workspace carries
    its name and namespace (the NodeClaim's labels) and serves only that one, even when another
    workspace's selector matches it; nodes the user brought (no such labels) are shared by every
    workspace whose selector matches, as Kaito shares them."""
    exprs = list(expressions)
    names = []
    for n in nodes:
        meta = n.get("metadata") or {}
        labels = meta.get("labels") or {}
        if meta.get("deletionTimestamp") or (n.get("spec") or {}).get("unschedulable"):
            continue
        provisioned_for = (labels.get(WORKSPACE_LABEL), labels.get(WORKSPACE_NAMESPACE_LABEL))
        if owner is not None and WORKSPACE_LABEL in labels and provisioned_for != owner:
            continue
        if instance_type and labels.get(INSTANCE_TYPE_LABEL) != instance_type:
            continue
        if not matches(labels, match_labels, exprs) or gpu_capacity(n) < 1 or not node_ready(n):
            continue
        names.append(str(meta["name"]))
    return NodeView(sorted(names))


def nodeclaim(
    *,
    workspace: str,
    namespace: str,
    workspace_uid: str,
    slot: int,
    instance_type: str,
    match_labels: Mapping[str, str],
    storage_gib: int,
    gpus: int,
) -> dict[str, Any]:
    labels = {**match_labels, WORKSPACE_LABEL: workspace, WORKSPACE_NAMESPACE_LABEL: namespace}
    return {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodeClaim",
        "metadata": {
            "name": nodeclaim_name(workspace_uid, slot),
            "labels": labels,
            "annotations": {"kaito.sh/workspace-slot": str(slot)},
        },
        "spec": {
            "nodeClassRef": dict(NODECLASS_REF),
            "requirements": [
                {"key": INSTANCE_TYPE_LABEL, "operator": "In", "values": [instance_type]},
                {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
            ],
            "resources": {"requests": {"storage": f"{storage_gib}Gi", GPU_RESOURCE: str(gpus)}},
            "taints": [{"key": GPU_TAINT_KEY, "value": GPU_TAINT_VALUE, "effect": "NoSchedule"}],
        },
    }
