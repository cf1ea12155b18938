"""Wiring the real Azure SDK client to the ARM-shaped test server."""

from __future__ import annotations

import time
from typing import Any

from azure.core.credentials import AccessToken

from kaitopy.provisioner.azure import AzureProvider, AzureSettings
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


def provider_for(arm: FakeArm, **overrides: Any) -> AzureProvider:
    settings = AzureSettings(
        subscription_id=arm.subscription,
        resource_group=arm.resource_group,
        cluster_name=arm.cluster,
        location=arm.location,
        tenant_id="00000000-0000-0000-0000-0000000000aa",
        client_id="00000000-0000-0000-0000-0000000000bb",
        arm_endpoint=arm.base_url,
        **overrides,
    )
    # retry_backoff_factor small: the SDK's own retries of 429/5xx should not slow the tests.
    return AzureProvider(
        settings, StaticToken(), connection_verify=str(arm.cert.ca_path), retry_backoff_factor=0.05
    )
