"""Running the provisioner in the test's event loop against the real control plane, with either
the kwok provider or the azure provider talking to the ARM-shaped server (which registers an
AKS-shaped Node, kept Ready by kwok, when a pool succeeds)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaitopy.provisioner.app import Provisioner, wire
from kaitopy.provisioner.cloudprovider import CloudProvider
from kaitopy.provisioner.install import ensure_crds, ensure_default_nodeclass
from kaitopy.provisioner.kwok import KwokProvider, KwokSettings, NodeShape
from kaitopy.provisioner.lifecycle import NODECLAIM
from kaitopy.provisioner.settings import ProvisionerSettings
from kaitopy.provisioner.shapes import shape
from kaitopy.runtime import Client, Manager, ManagerSettings, kinds
from tests.support.azure import delete_nodes_of_pool, provider_for
from tests.support.fake_arm import Behavior, FakeArm, aks_node_for_pool
from tests.support.tls import make_server_cert

A100 = "Standard_NC24ads_A100_v4"
QUOTA_LESS = "Standard_NC96ads_A100_v4"
A100_SHAPE = shape(1, 80, "NVIDIA-A100-PCIE-80GB")


def shapes(instance_type: str) -> NodeShape:
    if instance_type not in (A100, QUOTA_LESS):
        raise KeyError(instance_type)
    return A100_SHAPE if instance_type == A100 else shape(4, 320, "NVIDIA-A100-PCIE-80GB")


@dataclass
class Cloud:
    """One provider under test, with a way to count what it created."""

    kind: str
    client: Client
    arm: FakeArm | None = None
    launch_delay_s: float = 0.0
    providers: list[CloudProvider] = field(default_factory=list)

    def provider(self) -> CloudProvider:
        """A fresh provider object (a restarted provisioner gets a new one)."""
        p: CloudProvider
        if self.arm is not None:
            p = provider_for(self.arm)
        else:
            settings = KwokSettings(
                launch_delay_s=self.launch_delay_s, failures={QUOTA_LESS: "QuotaExceeded"}
            )
            p = KwokProvider(self.client, shapes, settings)
        self.providers.append(p)
        return p

    def creations(self, claim: str) -> int | None:
        """How many times the cloud created the instance for `claim` (the ARM server counts its
        PUTs; kwok's instance is the Node itself, unique by name, so there is nothing to count)."""
        return self.arm.created_total[claim] if self.arm is not None else None

    async def instances(self) -> list[str]:
        p = self.provider()
        try:
            return sorted(i.name for i in await p.list())
        finally:
            await p.close()

    async def close(self) -> None:
        for p in self.providers:
            await p.close()


@contextlib.asynccontextmanager
async def cloud(kind: str, client: Client, tmp_path: Path, *, launch_delay_s: float) -> AsyncIterator[Cloud]:
    if kind == "kwok":
        c = Cloud(kind, client, launch_delay_s=launch_delay_s)
        try:
            yield c
        finally:
            await c.close()
        return
    arm_holder: list[FakeArm] = []

    async def pool_ready(pool: dict[str, Any]) -> None:
        a = arm_holder[0]
        node = aks_node_for_pool(
            pool, a.subscription, a.resource_group, a.cluster, a.location, dict(A100_SHAPE.capacity)
        )
        await client.create(kinds.NODE, node)

    async def pool_deleted(pool: dict[str, Any]) -> None:
        await delete_nodes_of_pool(client, pool)

    arm = FakeArm(
        make_server_cert(tmp_path / "arm-tls"),
        behavior=Behavior(create_seconds=max(launch_delay_s, 0.3), delete_seconds=0.3, quota={QUOTA_LESS: 0}),
        on_pool_ready=pool_ready,
        on_pool_deleted=pool_deleted,
    )
    arm_holder.append(arm)
    await arm.start()
    c = Cloud(kind, client, arm=arm, launch_delay_s=launch_delay_s)
    try:
        yield c
    finally:
        await c.close()
        await arm.stop()


@dataclass
class Running:
    manager: Manager
    provisioner: Provisioner
    task: asyncio.Task[None]

    async def stop(self) -> None:
        """A clean stop (SIGTERM)."""
        self.manager.stop()
        await asyncio.wait_for(self.task, 30)

    async def kill(self) -> None:
        """An abrupt end, as SIGKILL would leave things: no drain, nothing finished."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def start(client: Client, provider: CloudProvider, settings: ProvisionerSettings) -> Running:
    await ensure_crds(client)
    await ensure_default_nodeclass(client)
    mgr = Manager(client, ManagerSettings(probe_port=None, handle_signals=False))
    prov = wire(mgr, client, provider, settings)
    task = asyncio.create_task(mgr.run())
    await asyncio.wait_for(mgr.wait_running(), 30)
    return Running(mgr, prov, task)


def claim_name() -> str:
    return f"nc{uuid.uuid4().hex[:9]}"  # a valid AKS pool name: ^[a-z][a-z0-9]{0,11}$


def nodeclaim(name: str, instance_type: str = A100, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": NODECLAIM.api_version,
        "kind": "NodeClaim",
        "metadata": {"name": name, "labels": {"kaito.sh/workspace": "phi", **labels}},
        "spec": {
            "nodeClassRef": {"group": "kaito.sh", "kind": "KaitoNodeClass", "name": "default"},
            "requirements": [
                {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": [instance_type]},
                {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
            ],
            "resources": {"requests": {"storage": "120Gi", "nvidia.com/gpu": "1"}},
            "taints": [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}],
        },
    }


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or ():
        if c.get("type") == type_:
            return dict(c)
    return {}
