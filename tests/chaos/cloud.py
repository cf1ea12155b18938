"""The cloud side of the azure fault scenarios: the ARM-shaped test server, run in the suite's
process (it must outlive a SIGKILLed provisioner), registering an AKS-shaped Node, kept Ready by
kwok, when a pool succeeds and removing it when the pool is deleted."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from kaitopy.provisioner.shapes import catalog_shapes
from kaitopy.runtime import AlreadyExists, Client, kinds
from tests.support.azure import delete_nodes_of_pool
from tests.support.fake_arm import Behavior, FakeArm, aks_node_for_pool
from tests.support.tls import make_server_cert


@contextlib.asynccontextmanager
async def test_arm(client: Client, workdir: Path, behavior: Behavior) -> AsyncIterator[FakeArm]:
    shape_for = catalog_shapes()
    holder: list[FakeArm] = []

    async def pool_ready(pool: dict[str, Any]) -> None:
        arm = holder[0]
        shape = shape_for(pool["properties"]["vmSize"])
        node = aks_node_for_pool(
            pool, arm.subscription, arm.resource_group, arm.cluster, arm.location, dict(shape.capacity)
        )
        node["metadata"]["labels"].update(shape.labels)
        with contextlib.suppress(AlreadyExists):
            await client.create(kinds.NODE, node)

    async def pool_deleted(pool: dict[str, Any]) -> None:
        await delete_nodes_of_pool(client, pool)

    arm = FakeArm(
        make_server_cert(workdir / "arm-tls"),
        behavior=behavior,
        on_pool_ready=pool_ready,
        on_pool_deleted=pool_deleted,
    )
    holder.append(arm)
    await arm.start()
    try:
        yield arm
    finally:
        await arm.stop()


def arm_request_count(arm: FakeArm) -> int:
    return sum(arm.requests.values())


def peak_rate(times: list[float], window_s: float = 1.0) -> int:
    """The most requests seen in any `window_s` window."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] > window_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best
