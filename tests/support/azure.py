"""Wiring the real Azure SDK client to the ARM-shaped test server."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from azure.core.credentials import AccessToken

from kaitopy.provisioner.azure import AzureProvider, AzureSettings
from kaitopy.runtime import Client, NotFound, kinds
from tests.support.fake_arm import FakeArm


class StaticToken:
    """An AsyncTokenCredential that hands out a fixed bearer token (the test server checks it is sent)."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("test-token", int(time.time()) + 3600)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> StaticToken:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None


def fake_arm_settings(
    arm_endpoint: str, subscription: str, resource_group: str, cluster: str, location: str, **overrides: Any
) -> AzureSettings:
    """AzureSettings for the ARM-shaped test server (fixed test tenant and client ids)."""
    return AzureSettings(
        subscription_id=subscription,
        resource_group=resource_group,
        cluster_name=cluster,
        location=location,
        tenant_id="00000000-0000-0000-0000-0000000000aa",
        client_id="00000000-0000-0000-0000-0000000000bb",
        arm_endpoint=arm_endpoint,
        **overrides,
    )


async def delete_nodes_of_pool(client: Client, pool: dict[str, Any]) -> None:
    """What AKS does when an agent pool is deleted: its Nodes leave the cluster."""
    nodes = await client.list(kinds.NODE, label_selector=f"kubernetes.azure.com/agentpool={pool['name']}")
    for n in nodes.items:
        with contextlib.suppress(NotFound):
            await client.delete(kinds.NODE, n["metadata"]["name"])


def provider_for(arm: FakeArm, **overrides: Any) -> AzureProvider:
    settings = fake_arm_settings(
        arm.base_url, arm.subscription, arm.resource_group, arm.cluster, arm.location, **overrides
    )
    # retry_backoff_factor small: the SDK's own retries of 429/5xx should not slow the tests.
    return AzureProvider(
        settings, StaticToken(), connection_verify=str(arm.cert.ca_path), retry_backoff_factor=0.05
    )
