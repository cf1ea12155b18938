"""The shipped Azure custom roles (manifests/azure/) grant exactly the ARM actions the Azure
provider calls: every public method of the provider is driven through the real SDK client against
the ARM-shaped test server, which records each request; each request's path and method are turned
into its ARM action the way ARM authorizes it. A new SDK call (a new action) or a role that grants
more than is called fails this test."""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kaitopy.provisioner.azure import AzureProvider
from kaitopy.provisioner.cloudprovider import LaunchRequest
from tests.support.azure import provider_for
from tests.support.fake_arm import Behavior, FakeArm
from tests.support.tls import make_server_cert
from tests.support.wait import eventually

REPO = Path(__file__).resolve().parents[3]
ROLES = REPO / "manifests" / "azure"
CLUSTER_ROLE = ROLES / "kaitopy-provisioner-role.json"
OPERATIONS_ROLE = ROLES / "kaitopy-provisioner-operations-role.json"
# The provider methods this test drives; a new public method must be added here (and driven).
DRIVEN = {"begin_launch", "poll_launch", "get", "list", "begin_delete", "close"}


def arm_action(method: str, path: str) -> str:
    """The ARM action a request needs: the provider namespace, the resource types named in the
    path (every other segment after it), and read/write/delete by method; a POST on an item is
    the action named by its last segment."""
    segments = [s for s in path.split("/") if s]
    lowered = [s.lower() for s in segments]
    at = lowered.index("providers")
    namespace, rest = segments[at + 1], segments[at + 2 :]
    types = rest[0::2]
    if method == "POST":
        assert len(rest) % 2 == 1, f"POST {path}: expected an action after an item"
        return "/".join([namespace, *types[:-1], types[-1], "action"])
    verb = {"GET": "read", "HEAD": "read", "PUT": "write", "PATCH": "write", "DELETE": "delete"}[method]
    return "/".join([namespace, *types, verb])


def test_arm_action_of_paths() -> None:
    cluster = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/c"
    assert arm_action("PUT", cluster + "/agentPools/p") == (
        "Microsoft.ContainerService/managedClusters/agentPools/write"
    )
    assert (
        arm_action("GET", cluster + "/agentPools")
        == "Microsoft.ContainerService/managedClusters/agentPools/read"
    )
    assert arm_action("POST", cluster + "/agentPools/p/upgradeNodeImageVersion") == (
        "Microsoft.ContainerService/managedClusters/agentPools/upgradeNodeImageVersion/action"
    )
    assert arm_action(
        "GET", "/subscriptions/s/providers/Microsoft.ContainerService/locations/l/operations/o"
    ) == ("Microsoft.ContainerService/locations/operations/read")


@pytest.fixture
async def arm(tmp_path: Path) -> AsyncIterator[FakeArm]:
    server = FakeArm(make_server_cert(tmp_path / "tls"), behavior=Behavior(create_seconds=0.3))
    await server.start()
    yield server
    await server.stop()


def _request(name: str) -> LaunchRequest:
    return LaunchRequest(
        claim_name=name, instance_type="Standard_NC24ads_A100_v4", labels={}, taints=[], storage_gib=128
    )


async def _used_actions(arm: FakeArm) -> set[str]:
    provider = provider_for(arm)
    try:
        req = _request("wsrole01")
        token = await provider.begin_launch(req)
        await eventually(
            lambda: provider.poll_launch(req, token), until=lambda p: p.done, timeout=10, what="up"
        )
        # A launch met again after a restart (409 while creating: adopted and polled by GET).
        arm.behavior.create_seconds = 2
        again = _request("wsrole02")
        await provider.begin_launch(again)
        adopted = await provider.begin_launch(again)
        await provider.poll_launch(again, adopted)
        await provider.list()
        await provider.get("absent")
        for name in (req.claim_name, again.claim_name):
            await provider.begin_delete(name)
        await eventually(provider.list, until=lambda pools: pools == [], timeout=15, what="deleted")
    finally:
        await provider.close()
    return {arm_action(method, path) for method, path in arm.calls}


async def test_roles_grant_exactly_the_actions_the_provider_calls(arm: FakeArm) -> None:
    public = {n for n, _ in inspect.getmembers(AzureProvider, inspect.isfunction) if not n.startswith("_")}
    assert public == DRIVEN, f"drive the new provider methods in this test: {public - DRIVEN}"
    used = await _used_actions(arm)
    cluster_role, operations_role = (json.loads(p.read_text()) for p in (CLUSTER_ROLE, OPERATIONS_ROLE))
    granted = set(cluster_role["Actions"]) | set(operations_role["Actions"])
    assert used == granted, (
        f"called but not granted: {used - granted}; granted but not called: {granted - used}"
    )
    # Each role holds the actions of its scope: agent pools on the cluster, operation status
    # (a subscription-level location path) on the subscription.
    assert all("/managedClusters/" in a for a in cluster_role["Actions"])
    assert all(a.startswith("Microsoft.ContainerService/locations/") for a in operations_role["Actions"])
    for role in (cluster_role, operations_role):
        assert role["IsCustom"] and not role["NotActions"] and not role["DataActions"]
        assert not any("*" in a for a in role["Actions"])
