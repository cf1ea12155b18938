"""The kwok provider, for local and test clusters: a "launch" creates the Node itself, shaped like
a GPU node of the requested instance type, and kwok makes it behave like a real one. A simulated
launch delay and injected failures exercise the same non-blocking and error paths as a cloud."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kaitopy.provisioner.cloudprovider import (
    NODECLAIM_LABEL,
    PROVIDER_LABEL,
    CloudProviderError,
    Instance,
    InsufficientCapacityError,
    LaunchFailedError,
    LaunchProgress,
    LaunchRequest,
    QuotaExceededError,
    SkuNotAvailableError,
)
from kaitopy.runtime import AlreadyExists, ApiError, Client, NotFound, kinds

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
_FAILURES: dict[str, type[LaunchFailedError]] = {
    "QuotaExceeded": QuotaExceededError,
    "InsufficientCapacity": InsufficientCapacityError,
    "SKUNotAvailable": SkuNotAvailableError,
}


@dataclass(frozen=True)
class NodeShape:
    """What a node of an instance type looks like: its capacity and hardware labels."""

    capacity: Mapping[str, str]
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class KwokSettings:
    # Seconds between the launch and the Node's appearance, to exercise requeue-and-poll.
    launch_delay_s: float = 0.0
    # instance type -> failure reason (QuotaExceeded | InsufficientCapacity | SKUNotAvailable).
    failures: Mapping[str, str] = field(default_factory=dict)

    @staticmethod
    def parse_failures(specs: list[str]) -> dict[str, str]:
        """`SKU=Reason` strings from the command line."""
        out: dict[str, str] = {}
        for spec in specs:
            sku, sep, reason = spec.partition("=")
            if not sep or reason not in _FAILURES:
                raise ValueError(
                    f"--kwok-fail {spec!r}: expected INSTANCE_TYPE=REASON, "
                    f"REASON one of {', '.join(_FAILURES)}"
                )
            out[sku] = reason
        return out


class KwokProvider:
    name = "kwok"

    def __init__(
        self, client: Client, shape_for: Callable[[str], NodeShape], settings: KwokSettings | None = None
    ) -> None:
        self._client = client
        self._shape_for = shape_for
        self.settings = settings or KwokSettings()

    async def close(self) -> None:
        return None

    async def begin_launch(self, request: LaunchRequest) -> str:
        reason = self.settings.failures.get(request.instance_type)
        if reason is not None:
            raise _FAILURES[reason](
                f"simulated {reason} for instance type {request.instance_type} "
                "(kwok provider failure injection)",
                code=reason,
            )
        self._shape_for(request.instance_type)  # an unknown SKU fails here, before any wait
        return json.dumps({"startedAt": time.time()})

    async def poll_launch(self, request: LaunchRequest, token: str) -> LaunchProgress:
        started = float(json.loads(token)["startedAt"])
        left = started + self.settings.launch_delay_s - time.time()
        if left > 0:
            return LaunchProgress(None, f"simulated launch of {request.claim_name}: {left:.0f}s left")
        try:
            await self._client.create(kinds.NODE, self._node_for(request))
        except AlreadyExists:
            pass  # created before a restart: the same node is fine
        except ApiError as err:
            raise CloudProviderError(f"creating node {request.claim_name}: {err}", cause=err) from err
        instance = await self.get(request.claim_name)
        if instance is None:
            return LaunchProgress(None, f"node {request.claim_name} not visible yet")
        return LaunchProgress(instance)

    async def get(self, claim_name: str) -> Instance | None:
        try:
            node = await self._client.get_or_none(kinds.NODE, claim_name)
        except ApiError as err:
            raise CloudProviderError(f"reading node {claim_name}: {err}", cause=err) from err
        if node is None or (node["metadata"].get("labels") or {}).get(PROVIDER_LABEL) != self.name:
            return None
        return self._instance(node)

    async def list(self) -> list[Instance]:
        try:
            nodes = await self._client.list(kinds.NODE, label_selector=f"{PROVIDER_LABEL}={self.name}")
        except ApiError as err:
            raise CloudProviderError(f"listing nodes: {err}", cause=err) from err
        return [self._instance(n) for n in nodes.items]

    async def begin_delete(self, claim_name: str) -> None:
        try:
            await self._client.delete(kinds.NODE, claim_name)
        except NotFound:
            pass
        except ApiError as err:
            raise CloudProviderError(f"deleting node {claim_name}: {err}", cause=err) from err

    def _instance(self, node: dict[str, Any]) -> Instance:
        meta = node["metadata"]
        labels = meta.get("labels") or {}
        created = meta.get("creationTimestamp")
        return Instance(
            name=str(meta["name"]),
            instance_type=labels.get("node.kubernetes.io/instance-type", ""),
            state="deleting" if meta.get("deletionTimestamp") else "running",
            provider_id=(node.get("spec") or {}).get("providerID"),
            node_name=str(meta["name"]),
            claim_name=labels.get(NODECLAIM_LABEL),
            created_at=datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
            if created
            else None,
            labels={NODECLAIM_LABEL: labels.get(NODECLAIM_LABEL, "")},
        )

    def _node_for(self, request: LaunchRequest) -> dict[str, Any]:
        shape = self._shape_for(request.instance_type)
        name = request.claim_name
        taints = [*request.taints, *request.startup_taints]
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {KWOK_ANNOTATION: "fake"},
                "labels": {
                    **request.labels,
                    **shape.labels,
                    "node.kubernetes.io/instance-type": request.instance_type,
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    NODECLAIM_LABEL: name,
                    PROVIDER_LABEL: self.name,
                },
            },
            "spec": {
                "providerID": f"kwok://{name}",
                "taints": [{"key": t.key, "value": t.value, "effect": t.effect} for t in taints],
            },
            "status": {"capacity": dict(shape.capacity), "allocatable": dict(shape.capacity)},
        }
