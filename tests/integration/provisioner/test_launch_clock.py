"""The launch timeout is timed on one clock, the provisioner's: a provisioner whose clock runs
hours ahead of the API server's neither times a fresh claim out at once nor waits forever. The
lifecycle runs pass by pass here, over a claims cache the test fills (no informer timing)."""

from __future__ import annotations

import time
from typing import Any

from kubernetes_asyncio.client.api_client import ApiClient

from kaitopy.provisioner.install import ensure_crds, ensure_default_nodeclass
from kaitopy.provisioner.kwok import KwokProvider, KwokSettings
from kaitopy.provisioner.lifecycle import NODE_INDEX, NodeClaimLifecycle, node_index
from kaitopy.provisioner.nodeclaim import TERMINATION_FINALIZER
from kaitopy.provisioner.settings import ProvisionerSettings
from kaitopy.runtime import Client, EventRecorder, Request
from kaitopy.runtime.cache.store import Store
from tests.integration.provisioner.harness import NODECLAIM, claim_name, condition, nodeclaim, shapes

SKEW_S = 2 * 3600.0
"""The provisioner's clock is two hours ahead of the API server's (a host with a wrong clock)."""
TIMEOUT_S = 600.0


class SkewedClock:
    def __init__(self, offset_s: float) -> None:
        self.offset_s = offset_s

    def __call__(self) -> float:
        return time.time() + self.offset_s


async def test_launch_timeout_uses_the_provisioners_clock_only(api_client: ApiClient) -> None:
    client = Client(api_client)
    await ensure_crds(client)
    await ensure_default_nodeclass(client)
    provider = KwokProvider(client, shapes, KwokSettings(launch_delay_s=3600))  # never launches here
    clock = SkewedClock(SKEW_S)
    claims, nodes = Store(), Store({NODE_INDEX: node_index})
    lifecycle = NodeClaimLifecycle(
        client,
        claims,
        nodes,
        provider,
        EventRecorder(client, "kaitopy-test"),
        ProvisionerSettings(launch_timeout_s=TIMEOUT_S, poll_interval_s=0.1),
        clock=clock,
    )
    name = claim_name()
    await client.create(NODECLAIM, nodeclaim(name))

    async def one_pass() -> dict[str, Any] | None:
        claims.replace((await client.list(NODECLAIM)).items)
        await lifecycle.reconcile(Request("", name))
        return await client.get_or_none(NODECLAIM, name)

    try:
        for _ in range(3):  # finalizer, launch begun, polled
            claim = await one_pass()
            assert claim is not None
            launched = condition(claim, "Launched")
            # Timed from creationTimestamp, the claim looked two hours old: LaunchTimeout at once.
            assert launched.get("reason") != "LaunchTimeout", launched
            assert not claim["metadata"].get("deletionTimestamp")
        assert launched["status"] == "Unknown" and launched["reason"] == "Launching"

        clock.offset_s += TIMEOUT_S + 5  # the launch runs past its timeout, by the same clock
        claim = await one_pass()
        assert claim is not None
        assert condition(claim, "Launched")["reason"] == "LaunchTimeout"
        assert claim["metadata"].get("deletionTimestamp")
    finally:
        # Terminate: no instance was launched, so the finalizer goes at once.
        for _ in range(5):
            left = await client.get_or_none(NODECLAIM, name)
            if left is None:
                break
            if not left["metadata"].get("deletionTimestamp"):
                await client.delete(NODECLAIM, name)
            elif TERMINATION_FINALIZER in (left["metadata"].get("finalizers") or ()):
                await one_pass()
        await provider.close()
