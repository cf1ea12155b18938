"""The azure provider through the real azure-mgmt-containerservice client, against the ARM-shaped
test server: launch, poll, resume from the continuation token, failures, deletion."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kaitopy.provisioner.azure import AzureConfigError, AzureSettings
from kaitopy.provisioner.cloudprovider import (
    CloudProviderError,
    InsufficientCapacityError,
    InvalidLaunchRequestError,
    LaunchFailedError,
    LaunchRequest,
    QuotaExceededError,
    SkuNotAvailableError,
    Taint,
)
from kaitopy.provisioner.garbage import GarbageCollector
from kaitopy.provisioner.settings import ProvisionerSettings
from tests.support.azure import provider_for
from tests.support.fake_arm import Behavior, FakeArm
from tests.support.tls import make_server_cert
from tests.support.wait import eventually


@pytest.fixture
async def arm(tmp_path: Path) -> AsyncIterator[FakeArm]:
    server = FakeArm(make_server_cert(tmp_path / "tls"), behavior=Behavior(create_seconds=0.3))
    await server.start()
    yield server
    await server.stop()


def request(name: str = "ws0a1b2c3d4", sku: str = "Standard_NC24ads_A100_v4") -> LaunchRequest:
    return LaunchRequest(
        claim_name=name,
        instance_type=sku,
        labels={"kaito.sh/workspace": "phi"},
        taints=[Taint("sku", "NoSchedule", "gpu")],
        startup_taints=[Taint("karpenter.sh/unregistered", "NoExecute")],
        storage_gib=256,
    )


async def test_launch_polls_until_the_pool_succeeds(arm: FakeArm) -> None:
    provider = provider_for(arm)
    try:
        req = request()
        token = await provider.begin_launch(req)
        assert token.startswith("lro:")
        first = await provider.poll_launch(req, token)
        assert not first.done
        assert "being created" in first.message
        done = await eventually(
            lambda: provider.poll_launch(req, token),
            until=lambda p: p.done,
            timeout=10,
            what="pool succeeded",
        )
        assert done.instance is not None
        assert done.instance.state == "running"
        assert done.instance.labels == {"kubernetes.azure.com/agentpool": req.claim_name}
        props = arm.pools[req.claim_name]["properties"]
        assert props["vmSize"] == "Standard_NC24ads_A100_v4"
        assert props["mode"] == "User" and props["count"] == 1 and props["osDiskSizeGB"] == 256
        assert props["nodeLabels"]["kaito.sh/machine-type"] == "gpu"
        assert props["nodeLabels"]["kaito.sh/workspace"] == "phi"
        assert props["nodeTaints"] == ["sku=gpu:NoSchedule", "karpenter.sh/unregistered:NoExecute"]
        assert arm.created_total[req.claim_name] == 1
    finally:
        await provider.close()


async def test_a_restarted_provider_resumes_from_the_token_without_a_second_put(arm: FakeArm) -> None:
    req = request()
    first = provider_for(arm)
    token = await first.begin_launch(req)
    await first.close()  # the operator died here, the token was saved on the NodeClaim
    second = provider_for(arm)
    try:
        await eventually(
            lambda: second.poll_launch(req, token),
            until=lambda p: p.done,
            timeout=10,
            what="resumed launch done",
        )
        assert arm.requests[("PUT", req.claim_name)] == 1
    finally:
        await second.close()


async def test_begin_launch_on_a_pool_being_created_adopts_it(arm: FakeArm) -> None:
    provider = provider_for(arm)
    try:
        req = request()
        await provider.begin_launch(req)
        # A restart between the PUT and saving the token: the second PUT meets a 409 and follows the pool.
        token = await provider.begin_launch(req)
        assert token == "adopt"
        await eventually(
            lambda: provider.poll_launch(req, token),
            until=lambda p: p.done,
            timeout=10,
            what="adopted launch done",
        )
        assert arm.created_total[req.claim_name] == 1
    finally:
        await provider.close()


async def test_a_cluster_busy_409_is_retried_not_adopted(arm: FakeArm) -> None:
    # ARM answers 409 OperationNotAllowed both for "your pool is being created" and for "the
    # cluster is busy with another operation": only the first may be followed as our pool.
    arm.behavior.cluster_busy_next = 1
    provider = provider_for(arm)
    try:
        req = request()
        with pytest.raises(CloudProviderError) as info:
            await provider.begin_launch(req)
        assert not isinstance(info.value, LaunchFailedError)  # retryable, not a permanent failure
        assert "busy" in str(info.value)
        token = await provider.begin_launch(req)  # the controller's retry: the PUT goes through
        assert token.startswith("lro:")
        await eventually(
            lambda: provider.poll_launch(req, token), until=lambda p: p.done, timeout=10, what="launch"
        )
        assert arm.created_total[req.claim_name] == 1
    finally:
        await provider.close()


async def test_a_hung_request_is_cut_by_the_per_try_timeout_and_retried(arm: FakeArm) -> None:
    # With the SDK's defaults (300 s per try) this call would hang for minutes; bounded, the first
    # try is cut after read_timeout_s and the retry answers.
    arm.behavior.stall_next = 1
    arm.behavior.stall_seconds = 6
    provider = provider_for(arm, read_timeout_s=1.0)
    try:
        assert await asyncio.wait_for(provider.get("ws0a1b2c3d4"), 4) is None
        assert arm.requests[("GET", "stalled")] == 1
    finally:
        await provider.close()


@pytest.mark.parametrize(
    ("behavior", "error"),
    [
        (Behavior(quota={"Standard_NC24ads_A100_v4": 0}), QuotaExceededError),
        (Behavior(no_capacity_skus={"Standard_NC24ads_A100_v4"}), InsufficientCapacityError),
    ],
)
async def test_async_failures_are_terminal_with_their_reason(
    tmp_path: Path, behavior: Behavior, error: type[Exception]
) -> None:
    arm = FakeArm(make_server_cert(tmp_path / "tls"), behavior=behavior)
    await arm.start()
    provider = provider_for(arm)
    try:
        req = request()
        token = await provider.begin_launch(req)
        with pytest.raises(error) as info:
            await eventually(
                lambda: provider.poll_launch(req, token),
                until=lambda p: p.done,
                timeout=10,
                what="failure",
                stop_on=(error,),
            )
        assert "Standard_NC24ads_A100_v4" in str(info.value)
    finally:
        await provider.close()
        await arm.stop()


async def test_synchronous_failures(tmp_path: Path) -> None:
    arm = FakeArm(
        make_server_cert(tmp_path / "tls"), behavior=Behavior(unavailable_skus={"Standard_ND96isr_H200_v5"})
    )
    await arm.start()
    provider = provider_for(arm)
    try:
        with pytest.raises(SkuNotAvailableError, match="not available"):
            await provider.begin_launch(request(sku="Standard_ND96isr_H200_v5"))
        with pytest.raises(InvalidLaunchRequestError, match="agent pool name"):
            await provider.begin_launch(request(name="Not-A-Pool-Name"))
        assert ("PUT", "Not-A-Pool-Name") not in arm.requests  # refused before any API call
    finally:
        await provider.close()
        await arm.stop()


async def test_throttling_and_5xx_are_retried_by_the_client(arm: FakeArm) -> None:
    arm.behavior.throttle_next = 1
    arm.behavior.throttle_retry_after_s = 0
    arm.behavior.fail_next_5xx = 1
    provider = provider_for(arm)
    try:
        token = await provider.begin_launch(request())
        assert token.startswith("lro:")
        assert arm.requests[("PUT", "throttled")] == 1 and arm.requests[("PUT", "5xx")] == 1
    finally:
        await provider.close()


async def test_persistent_server_errors_are_retryable_not_terminal(arm: FakeArm) -> None:
    arm.behavior.fail_next_5xx = 100
    provider = provider_for(arm, retry_total=1)
    try:
        with pytest.raises(CloudProviderError) as info:
            await provider.get("ws0a1b2c3d4")
        assert not isinstance(info.value, QuotaExceededError)
    finally:
        await provider.close()


async def test_delete_get_and_list(arm: FakeArm) -> None:
    provider = provider_for(arm)
    try:
        req = request()
        token = await provider.begin_launch(req)
        await eventually(
            lambda: provider.poll_launch(req, token), until=lambda p: p.done, timeout=10, what="up"
        )
        listed = await provider.list()
        assert [(i.name, i.claim_name) for i in listed] == [(req.claim_name, req.claim_name)]
        assert listed[0].created_at is not None
        await provider.begin_delete(req.claim_name)
        await provider.begin_delete(req.claim_name)  # idempotent while Deleting
        seen = await provider.get(req.claim_name)
        assert seen is not None and seen.state == "deleting"
        await eventually(
            lambda: provider.get(req.claim_name), until=lambda i: i is None, timeout=10, what="gone"
        )
        await provider.begin_delete(req.claim_name)  # and once gone
        assert await provider.list() == []
    finally:
        await provider.close()


async def test_deleting_mid_launch_cancels_the_creation(arm: FakeArm) -> None:
    arm.behavior.create_seconds = 5
    provider = provider_for(arm)
    try:
        req = request()
        await provider.begin_launch(req)
        await provider.begin_delete(req.claim_name)
        await eventually(
            lambda: provider.get(req.claim_name), until=lambda i: i is None, timeout=10, what="gone"
        )
        assert arm.pools == {}
    finally:
        await provider.close()


def test_settings_from_env_name_what_is_missing() -> None:
    with pytest.raises(AzureConfigError) as info:
        AzureSettings.from_env({"ARM_SUBSCRIPTION_ID": "s", "LOCATION": "eastus"})
    message = str(info.value)
    for var in ("ARM_RESOURCE_GROUP", "AZURE_CLUSTER_NAME", "AZURE_TENANT_ID", "AZURE_CLIENT_ID"):
        assert var in message
    assert "ARM_SUBSCRIPTION_ID" not in message
    full = dict.fromkeys(AzureSettings.ENV, "x")
    assert AzureSettings.from_env(full).cluster_name == "x"


async def test_an_unreachable_arm_is_a_retryable_error_and_garbage_collection_survives_it(
    tmp_path: Path,
) -> None:
    """A network failure (connection refused, reset, timeout) is no HTTP error: it must still come
    out as a retryable CloudProviderError, or it escapes the garbage collector's loop and takes
    the whole provisioner down with it."""
    arm = FakeArm(make_server_cert(tmp_path / "tls"))
    await arm.start()
    provider = provider_for(arm, retry_total=0)
    try:
        token = await provider.begin_launch(request("ws1a1b2c3d4"))
        await arm.stop()  # the port is closed now: every connection is refused
        calls = [
            provider.begin_launch(request()),
            provider.poll_launch(request("ws1a1b2c3d4"), token),
            provider.get("ws0a1b2c3d4"),
            provider.list(),
            provider.begin_delete("ws0a1b2c3d4"),
        ]
        for call in calls:
            with pytest.raises(CloudProviderError) as info:
                await call
            assert not isinstance(info.value, LaunchFailedError)  # retried, never terminal
            assert "127.0.0.1" in str(info.value) or "connect" in str(info.value).lower()

        class Synced:
            store = type("Store", (), {"list": staticmethod(list)})()

            async def wait_synced(self) -> None:
                return None

        collector = GarbageCollector(provider, Synced(), ProvisionerSettings())  # type: ignore[arg-type]
        assert await collector.collect_once() == []
    finally:
        await provider.close()


async def test_a_second_put_on_a_pool_that_already_succeeded_is_followed_to_the_pool(arm: FakeArm) -> None:
    # A provisioner killed after its PUT and restarted once the pool is done: its PUT is answered
    # 200 with the finished pool, so the operation's token is already terminal. Polling it must
    # find the pool (the SDK cannot read a result from such a token: it raised AttributeError, and
    # the claim never got past Launched, on every retry).
    provider = provider_for(arm)
    try:
        req = request()
        first = await provider.begin_launch(req)
        await eventually(
            lambda: provider.poll_launch(req, first),
            until=lambda p: p.done,
            timeout=10,
            what="pool succeeded",
        )
        again = await provider.begin_launch(req)
        progress = await provider.poll_launch(req, again)
        assert progress.done and progress.instance is not None and progress.instance.state == "running"
        assert arm.created_total[req.claim_name] == 1
    finally:
        await provider.close()
