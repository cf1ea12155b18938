"""How a model's Deployment rolls out a change: keep the old pod serving until the new one is
Ready (RollingUpdate, one pod surging) when a node has room for a second copy, else Recreate —
an accelerator the old pod holds cannot be shared, and a surge pod that cannot be scheduled would
stall the rollout for good. Pure: the reconciler passes the pod template and the nodes it runs on.

The room test is allocatable >= twice the pod's requests, on one node: the nodes the operator
provisions are the workspace's own, so nothing else is counted against them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kaitopy.runtime.objects import Obj
from kaitopy.runtime.quantity import parse_quantity

ROLLING: dict[str, Any] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
RECREATE: dict[str, Any] = {"type": "Recreate"}


@dataclass(frozen=True)
class Rollout:
    strategy: dict[str, Any]
    why: str

    @property
    def rolling(self) -> bool:
        return bool(self.strategy["type"] == "RollingUpdate")


def _requests(container: Mapping[str, Any]) -> dict[str, float]:
    resources = container.get("resources") or {}
    # A limit without a request is also the request (the API server defaults it so).
    merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    return {k: parse_quantity(v) for k, v in merged.items()}


def pod_requests(template: Mapping[str, Any]) -> dict[str, float]:
    """What the scheduler reserves for one pod of the template: the containers' requests summed,
    or an init container's if larger (init containers run one at a time, before the others)."""
    spec = template.get("spec") or {}
    total: dict[str, float] = {}
    for c in spec.get("containers") or ():
        for k, v in _requests(c).items():
            total[k] = total.get(k, 0.0) + v
    for c in spec.get("initContainers") or ():
        for k, v in _requests(c).items():
            total[k] = max(total.get(k, 0.0), v)
    return {k: v for k, v in total.items() if v > 0}


def decide(template: Mapping[str, Any], nodes: Sequence[Obj]) -> Rollout:
    need = pod_requests(template)
    if not nodes:
        return Rollout(RECREATE, "Recreate: no node to measure yet")
    shortest = ""
    for node in nodes:
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        short = [
            (res, amount, parse_quantity(allocatable.get(res, "0")))
            for res, amount in sorted(need.items())
            if parse_quantity(allocatable.get(res, "0")) < 2 * amount
        ]
        if not short:
            return Rollout(
                ROLLING,
                f"rolling: node {node['metadata']['name']} has room for a second copy; "
                "the old pod serves until the new one is ready",
            )
        res, amount, has = short[0]
        shortest = shortest or f"{res}: a copy needs {amount:g}, node {node['metadata']['name']} has {has:g}"
    return Rollout(
        RECREATE,
        f"Recreate: no node has room for a second copy ({shortest}); "
        "the model is down while the new pod starts",
    )
