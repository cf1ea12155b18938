"""The idle clock of a set that scales to zero: a Lease per InferenceSet in the operator's namespace,
whose `spec.renewTime` the activator moves forward when requests for the set arrive (and while it
holds or forwards them), and which the autoscaler reads to know how long the set has been idle.

Why a Lease there: the activator may then write only Leases in the operator's own namespace, never
the InferenceSet itself (patching the set would let it change its template), and the clock survives
restarts of both the activator and the controller. The name never collides with the operator's
leader-election Leases (they carry no `activity.` prefix).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

PREFIX = "activity."
HOLDER = "kaitopy-activator"
SET_ANNOTATION = "kaitopy.io/inferenceset"
MAX_NAME = 253


def lease_name(namespace: str, name: str) -> str:
    """`activity.<namespace>.<set>` (a namespace has no dots, so the name is unambiguous); a hash
    where that would pass the 253 characters a Lease name may have."""
    full = f"{PREFIX}{namespace}.{name}"
    if len(full) <= MAX_NAME:
        return full
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:16]
    return f"{full[: MAX_NAME - 17]}-{digest}"


def micro_time(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(operator_namespace: str, namespace: str, name: str, at: float) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name(namespace, name),
            "namespace": operator_namespace,
            "annotations": {SET_ANNOTATION: f"{namespace}/{name}"},
        },
        "spec": {"holderIdentity": HOLDER, "renewTime": micro_time(at)},
    }


def last_request_at(lease: Mapping[str, Any] | None) -> float | None:
    """When the activator last saw a request for the set (seconds since the epoch), or None."""
    raw = ((lease or {}).get("spec") or {}).get("renewTime")
    if not raw:
        return None
    try:
        return datetime.fromisoformat(str(raw).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
