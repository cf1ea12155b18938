"""Pure decisions about a NodeClaim: what to launch, how its Node must look, and what its
conditions say. No I/O: the lifecycle controller observes, calls these, then acts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kaitopy.api.nodeclaim import (
    INITIALIZED as INITIALIZED,
)
from kaitopy.api.nodeclaim import (
    INITIALIZED_LABEL as INITIALIZED_LABEL,
)
from kaitopy.api.nodeclaim import (
    INSTANCE_TYPE_LABEL as INSTANCE_TYPE_LABEL,
)
from kaitopy.api.nodeclaim import (
    LAUNCHED as LAUNCHED,
)
from kaitopy.api.nodeclaim import (
    READY as READY,
)
from kaitopy.api.nodeclaim import (
    REGISTERED as REGISTERED,
)
from kaitopy.api.nodeclaim import (
    REGISTERED_LABEL as REGISTERED_LABEL,
)
from kaitopy.api.nodeclaim import (
    TERMINATION_FINALIZER as TERMINATION_FINALIZER,
)
from kaitopy.provisioner.cloudprovider import NODECLAIM_LABEL, LaunchRequest, Taint
from kaitopy.provisioner.crds import NODECLASS_GROUP, NODECLASS_KIND
from kaitopy.runtime import find_condition, set_condition
from kaitopy.runtime.conditions import Status
from kaitopy.runtime.objects import Obj

UNREGISTERED_TAINT = Taint("karpenter.sh/unregistered", "NoExecute")
OS_SKU_ANNOTATION = "kaito.sh/os-sku"
# The provider's continuation token for the launch in flight: survives an operator restart.
LAUNCH_TOKEN_ANNOTATION = "kaito.sh/launch-operation"

TERMINATING = "InstanceTerminating"
DEPENDENTS = (LAUNCHED, REGISTERED, INITIALIZED)
AWAITING = "AwaitingReconciliation"


def is_ours(claim: Obj) -> bool:
    ref = (claim.get("spec") or {}).get("nodeClassRef") or {}
    return ref.get("group") == NODECLASS_GROUP and ref.get("kind") == NODECLASS_KIND


def _taints(specs: Iterable[Mapping[str, Any]] | None) -> list[Taint]:
    return [Taint(str(t["key"]), str(t["effect"]), str(t.get("value", ""))) for t in specs or ()]


def single_value_requirements(claim: Obj) -> dict[str, str]:
    """Labels the node gets from requirements pinned to one value (`key In [value]`)."""
    out: dict[str, str] = {}
    for r in (claim.get("spec") or {}).get("requirements") or ():
        values = list(r.get("values") or [])
        if r.get("operator") == "In" and len(values) == 1:
            out[str(r["key"])] = str(values[0])
    return out


class ClaimSpecError(ValueError):
    """The claim cannot be launched as written (it is immutable, so this is terminal)."""


def gib(quantity: str) -> int:
    """A storage quantity in whole GiB, rounded up (AKS takes the OS disk size in GB)."""
    units = {
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "K": 10**3,
        "M": 10**6,
        "G": 10**9,
        "T": 10**12,
    }
    q = quantity.strip()
    for suffix in sorted(units, key=len, reverse=True):
        if q.endswith(suffix):
            value = float(q[: -len(suffix)]) * units[suffix]
            break
    else:
        value = float(q)
    return max(1, -(-int(value) // 2**30))


def launch_request_for(claim: Obj, default_os_sku: str | None = None) -> LaunchRequest:
    labels = {**((claim.get("metadata") or {}).get("labels") or {}), **single_value_requirements(claim)}
    instance_type = labels.get(INSTANCE_TYPE_LABEL)
    if not instance_type:
        raise ClaimSpecError(
            f"spec.requirements must pin {INSTANCE_TYPE_LABEL} to exactly one value (operator In, one value)"
        )
    spec = claim.get("spec") or {}
    storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
    annotations = (claim.get("metadata") or {}).get("annotations") or {}
    name = str(claim["metadata"]["name"])
    return LaunchRequest(
        claim_name=name,
        instance_type=instance_type,
        labels={k: v for k, v in labels.items() if k != INSTANCE_TYPE_LABEL},
        taints=_taints(spec.get("taints")),
        startup_taints=[*_taints(spec.get("startupTaints")), UNREGISTERED_TAINT],
        storage_gib=gib(str(storage)) if storage else 0,
        os_sku=annotations.get(OS_SKU_ANNOTATION) or default_os_sku,
    )


@dataclass(frozen=True)
class NodeUpdate:
    """What registration changes on the Node: labels to add, taints to end with, owner to set."""

    labels: dict[str, str]
    taints: list[dict[str, Any]]
    owner_reference: dict[str, Any]

    def changes(self, node: Obj) -> bool:
        meta = node.get("metadata") or {}
        have = meta.get("labels") or {}
        if any(have.get(k) != v for k, v in self.labels.items()):
            return True
        if _taint_keys((node.get("spec") or {}).get("taints")) != _taint_keys(self.taints):
            return True
        return not any(r.get("uid") == self.owner_reference["uid"] for r in meta.get("ownerReferences") or ())


def _taint_keys(taints: Iterable[Mapping[str, Any]] | None) -> set[tuple[str, str, str]]:
    return {(str(t.get("key")), str(t.get("value", "") or ""), str(t.get("effect"))) for t in taints or ()}


def registration_update(claim: Obj, node: Obj) -> NodeUpdate:
    """Karpenter's registration: claim labels and taints onto the Node, the unregistered taint off,
    and the claim as the Node's owner (so deleting the claim garbage-collects a forgotten Node)."""
    spec = claim.get("spec") or {}
    labels = {
        **((claim.get("metadata") or {}).get("labels") or {}),
        **single_value_requirements(claim),
        NODECLAIM_LABEL: str(claim["metadata"]["name"]),
        REGISTERED_LABEL: "true",
    }
    wanted = [dict(t) for t in spec.get("taints") or ()]
    kept = [
        dict(t)
        for t in (node.get("spec") or {}).get("taints") or ()
        if t.get("key") != UNREGISTERED_TAINT.key
        and (t.get("key"), t.get("effect")) not in {(w.get("key"), w.get("effect")) for w in wanted}
    ]
    owner = {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodeClaim",
        "name": str(claim["metadata"]["name"]),
        "uid": str(claim["metadata"]["uid"]),
        "blockOwnerDeletion": True,
    }
    return NodeUpdate(labels=labels, taints=kept + wanted, owner_reference=owner)


def node_ready(node: Obj) -> bool:
    cond = find_condition((node.get("status") or {}).get("conditions"), "Ready")
    return cond is not None and cond.get("status") == "True"


def initialization(claim: Obj, node: Obj) -> tuple[bool, str, str]:
    """(initialized, reason, message): the node is Ready, every resource the claim asked for is
    allocatable, and no startup taint is left."""
    if not node_ready(node):
        return False, "NodeNotReady", f"node {node['metadata']['name']} is not Ready"
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    requests = ((claim.get("spec") or {}).get("resources") or {}).get("requests") or {}
    missing = [
        r
        for r in requests
        if r not in ("storage", "ephemeral-storage", "pods") and not _positive(allocatable.get(r))
    ]
    if missing:
        return (
            False,
            "ResourceNotRegistered",
            f"resources {', '.join(sorted(missing))} not registered on the node",
        )
    startup = {(t.get("key"), t.get("effect")) for t in (claim.get("spec") or {}).get("startupTaints") or ()}
    left = [
        t for t in (node.get("spec") or {}).get("taints") or () if (t.get("key"), t.get("effect")) in startup
    ]
    if left:
        return (
            False,
            "StartupTaintsExist",
            f"startup taints {', '.join(str(t.get('key')) for t in left)} still on the node",
        )
    return True, "Initialized", ""


def _positive(quantity: Any) -> bool:
    if quantity is None:
        return False
    try:
        return float(str(quantity).rstrip("KMGTPEkmunpi")) > 0
    except ValueError:
        return False


def with_ready(
    conditions: list[dict[str, Any]], now: datetime, generation: int | None
) -> list[dict[str, Any]]:
    """Roll Launched/Registered/Initialized up into Ready, as Karpenter's condition sets do."""
    first_unready: Mapping[str, Any] | None = None
    for type_ in DEPENDENTS:
        cond = find_condition(conditions, type_)
        if cond is None or cond.get("status") != "True":
            first_unready = cond or {"type": type_, "status": "Unknown", "reason": AWAITING, "message": ""}
            break
    if first_unready is None:
        return set_condition(
            conditions, READY, "True", reason="Ready", now=now, observed_generation=generation
        )
    status: Status = "False" if first_unready.get("status") == "False" else "Unknown"
    reason = str(first_unready.get("reason") or AWAITING)
    message = (
        f"{first_unready['type']}={first_unready.get('status')}: {first_unready.get('message') or reason}"
    )
    return set_condition(
        conditions, READY, status, reason=reason, message=message, now=now, observed_generation=generation
    )


def initial_conditions(now: datetime, generation: int | None) -> list[dict[str, Any]]:
    conditions: list[dict[str, Any]] = []
    for type_ in DEPENDENTS:
        conditions = set_condition(
            conditions,
            type_,
            "Unknown",
            reason=AWAITING,
            message="object is awaiting reconciliation",
            now=now,
            observed_generation=generation,
        )
    return with_ready(conditions, now, generation)
