"""The azure provider: one AKS agent pool per NodeClaim, through `azure-mgmt-containerservice`.

A launch is a PUT of the agent pool; the SDK's long-running-operation continuation token is what
the controller keeps on the NodeClaim, so a restarted operator resumes polling the same operation
instead of creating the pool twice. Errors that no retry can fix (quota, capacity, an unavailable
VM size, an invalid request) become LaunchFailedError subclasses; throttling and server errors are
CloudProviderError, retried by the controller with backoff.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.mgmt.containerservice.aio import ContainerServiceClient
from azure.mgmt.containerservice.models import AgentPool, AgentPoolManagedClusterAgentPoolProfileProperties

from kaitopy.provisioner.cloudprovider import (
    NODECLAIM_LABEL,
    CloudProviderError,
    Instance,
    InsufficientCapacityError,
    InvalidLaunchRequestError,
    LaunchFailedError,
    LaunchProgress,
    LaunchRequest,
    QuotaExceededError,
    SkuNotAvailableError,
)

POOL_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
AGENTPOOL_LABEL = "kubernetes.azure.com/agentpool"
MACHINE_TYPE_LABEL = "kaito.sh/machine-type"
CREATED_TAG = "kaito.sh/creation-timestamp"
_LRO_PREFIX = "lro:"
_ADOPT_TOKEN = "adopt"  # the pool existed already: follow it through GET

# ARM error codes, by what they mean for a launch.
_QUOTA_CODES = {"QuotaExceeded", "OperationNotAllowed"}
_CAPACITY_CODES = {
    "AllocationFailed",
    "ZonalAllocationFailed",
    "OverconstrainedAllocationRequest",
    "OverconstrainedZonalAllocationRequest",
    "SkuNotAvailableInZone",
}
_SKU_CODES = {"SkuNotAvailable", "InvalidVMSize", "BadRequestVMSizeNotSupported"}
_INVALID_CODES = {"InvalidParameter", "BadRequest"}
_STATES = {"creating": "creating", "succeeded": "running", "deleting": "deleting", "failed": "failed"}


class AzureConfigError(ValueError):
    """The provisioner was started for Azure without the settings it needs."""


@dataclass(frozen=True)
class AzureSettings:
    """Where the AKS cluster is, read from the provisioner's environment."""

    subscription_id: str
    resource_group: str
    cluster_name: str
    location: str
    tenant_id: str
    client_id: str
    # Overrides the public-cloud ARM endpoint (sovereign clouds, tests).
    arm_endpoint: str | None = None
    # The SDK retries throttling and 5xx itself; a short budget keeps a worker from being held for
    # minutes, and the controller's rate-limited requeue takes over after it.
    retry_total: int = 3
    retry_backoff_max_s: int = 10
    # The SDK's own defaults wait 300 s per try (connect and read) and retry three times: one
    # hung call could hold a provisioner worker ~20 minutes, and ten such calls stall it,
    # terminations included. An ARM request answers in seconds; a try silent for longer is cut.
    connection_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    # Bound on one call's tries and backoffs together (the SDK's default is a week).
    retry_timeout_s: float = 120.0

    ENV: ClassVar[tuple[str, ...]] = (
        "ARM_SUBSCRIPTION_ID",
        "ARM_RESOURCE_GROUP",
        "AZURE_CLUSTER_NAME",
        "LOCATION",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AzureSettings:
        env = os.environ if env is None else env
        missing = [var for var in cls.ENV if not env.get(var)]
        if missing:
            raise AzureConfigError(
                "the azure provider needs these environment variables, which are unset or empty: "
                + ", ".join(missing)
                + " (set them on the provisioner Deployment, e.g. through the Helm chart's azure values)"
            )
        return cls(
            subscription_id=env["ARM_SUBSCRIPTION_ID"],
            resource_group=env["ARM_RESOURCE_GROUP"],
            cluster_name=env["AZURE_CLUSTER_NAME"],
            location=env["LOCATION"],
            tenant_id=env["AZURE_TENANT_ID"],
            client_id=env["AZURE_CLIENT_ID"],
            arm_endpoint=env.get("ARM_ENDPOINT") or None,
        )


def default_credential(settings: AzureSettings) -> AsyncTokenCredential:
    """Workload identity in-cluster, a managed identity on a VM, or service-principal env vars."""
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential(
        managed_identity_client_id=settings.client_id,
        workload_identity_client_id=settings.client_id,
        workload_identity_tenant_id=settings.tenant_id,
        exclude_interactive_browser_credential=True,
    )


def error_code(err: HttpResponseError) -> str:
    if err.error is not None and err.error.code:
        return str(err.error.code)
    try:
        body = json.loads(err.response.text()) if err.response is not None else {}
    except ValueError:
        body = {}
    code = (body.get("error") or {}).get("code") if isinstance(body, dict) else None
    return str(code or "")


def classify(err: HttpResponseError, claim: str) -> CloudProviderError:
    """Map an ARM error to what the lifecycle controller should do with it."""
    code = error_code(err)
    message = f"agent pool {claim}: {code or err.status_code}: {err.message}"
    if code == "OperationNotAllowed" and "quota" not in (err.message or "").lower():
        return CloudProviderError(message, cause=err)  # e.g. another operation in progress
    if code in _QUOTA_CODES:
        return QuotaExceededError(message, code=code, cause=err)
    if code in _CAPACITY_CODES:
        return InsufficientCapacityError(message, code=code, cause=err)
    if code in _SKU_CODES:
        return SkuNotAvailableError(message, code=code, cause=err)
    if code in _INVALID_CODES:
        return InvalidLaunchRequestError(message, code=code, cause=err)
    if code == "Canceled":
        return LaunchFailedError(message, code=code, cause=err)
    return CloudProviderError(message, cause=err)


def unreachable(err: AzureError, what: str) -> CloudProviderError:
    """ARM could not be reached or did not answer (connection refused or reset, a timeout): no
    HTTP status to classify, always worth retrying. Left as is, it would escape the controller's
    error handling and the garbage collector's loop, ending the process."""
    return CloudProviderError(f"{what}: azure resource manager unreachable: {err.message}", cause=err)


def agent_pool_for(request: LaunchRequest) -> AgentPool:
    """The agent pool a launch request asks for: one User-mode node of the requested size."""
    taints = [*request.taints, *request.startup_taints]
    return AgentPool(
        properties=AgentPoolManagedClusterAgentPoolProfileProperties(
            count=1,
            vm_size=request.instance_type,
            mode="User",
            os_type="Linux",
            os_sku=request.os_sku or "Ubuntu",
            os_disk_size_gb=request.storage_gib or None,
            node_labels={**request.labels, MACHINE_TYPE_LABEL: "gpu", NODECLAIM_LABEL: request.claim_name},
            node_taints=[
                f"{t.key}={t.value}:{t.effect}" if t.value else f"{t.key}:{t.effect}" for t in taints
            ],
            tags={NODECLAIM_LABEL: request.claim_name, CREATED_TAG: str(int(time.time()))},
        )
    )


class AzureProvider:
    name = "azure"

    def __init__(
        self, settings: AzureSettings, credential: AsyncTokenCredential | None = None, **client_kwargs: Any
    ) -> None:
        self.settings = settings
        self._credential = credential or default_credential(settings)
        kwargs: dict[str, Any] = {
            "retry_total": settings.retry_total,
            "retry_backoff_max": settings.retry_backoff_max_s,
            "connection_timeout": settings.connection_timeout_s,
            "read_timeout": settings.read_timeout_s,
            "timeout": settings.retry_timeout_s,  # the retry policy's total budget
            **client_kwargs,
        }
        if settings.arm_endpoint:
            kwargs["base_url"] = settings.arm_endpoint
        self._client = ContainerServiceClient(self._credential, settings.subscription_id, **kwargs)
        self._pools = self._client.agent_pools

    async def close(self) -> None:
        await self._client.close()

    def _where(self) -> tuple[str, str]:
        return self.settings.resource_group, self.settings.cluster_name

    async def begin_launch(self, request: LaunchRequest) -> str:
        if not POOL_NAME.match(request.claim_name):
            raise InvalidLaunchRequestError(
                f"NodeClaim name {request.claim_name!r} cannot be an AKS agent pool name: it must match "
                f"{POOL_NAME.pattern} (a lowercase letter, then at most 11 lowercase letters or digits)",
                code="InvalidPoolName",
            )
        try:
            poller = await self._pools.begin_create_or_update(
                *self._where(), request.claim_name, agent_pool_for(request)
            )
        except HttpResponseError as err:
            classified = classify(err, request.claim_name)
            if err.status_code == 409 and not isinstance(classified, LaunchFailedError):
                # Either our pool is already being created (by us, before a restart): follow it;
                # or the cluster is busy with another operation (an upgrade, another pool): the
                # pool does not exist and the PUT must be retried. Only a read tells them apart;
                # ARM words both as OperationNotAllowed.
                if await self.get(request.claim_name) is not None:
                    return _ADOPT_TOKEN
                raise CloudProviderError(
                    f"agent pool {request.claim_name}: the cluster is busy with another operation, "
                    f"retrying: {err.message}",
                    cause=err,
                ) from err
            raise classified from err
        except AzureError as err:
            # The PUT may have reached ARM: the next try meets the pool (409 or 200) and follows it.
            raise unreachable(err, f"agent pool {request.claim_name}") from err
        return _LRO_PREFIX + poller.continuation_token()

    async def poll_launch(self, request: LaunchRequest, token: str) -> LaunchProgress:
        if token.startswith(_LRO_PREFIX):
            try:
                poller = await self._pools.begin_create_or_update(
                    *self._where(),
                    request.claim_name,
                    agent_pool_for(request),
                    continuation_token=token[len(_LRO_PREFIX) :],
                )
                method = poller.polling_method()
                if not method.finished():
                    await method.update_status()  # type: ignore[attr-defined]
                if not method.finished():
                    return LaunchProgress(None, f"agent pool {request.claim_name} is being created")
                # Only a failed operation needs its result (it raises the operation's error). A
                # token that was terminal from the start (a PUT answered 200 with the finished
                # pool, after a restart) has no result the SDK can read; the pool is read below.
                if str(method.status()).lower() != "succeeded":
                    await poller.result()
            except HttpResponseError as err:
                raise classify(err, request.claim_name) from err
            except AzureError as err:
                raise unreachable(err, f"agent pool {request.claim_name}") from err
        instance = await self.get(request.claim_name)
        if instance is None:
            raise LaunchFailedError(
                f"agent pool {request.claim_name} disappeared while it was being created", code="NotFound"
            )
        if instance.state == "failed":
            raise LaunchFailedError(f"agent pool {request.claim_name} is in state Failed", code="Failed")
        if instance.state != "running":
            return LaunchProgress(None, f"agent pool {request.claim_name} is {instance.state}")
        return LaunchProgress(instance)

    async def get(self, claim_name: str) -> Instance | None:
        try:
            pool = await self._pools.get(*self._where(), claim_name)
        except ResourceNotFoundError:
            return None
        except HttpResponseError as err:
            raise classify(err, claim_name) from err
        except AzureError as err:
            raise unreachable(err, f"agent pool {claim_name}") from err
        return self._instance(pool)

    async def list(self) -> list[Instance]:
        try:
            pools = [p async for p in self._pools.list(*self._where())]
        except HttpResponseError as err:
            raise CloudProviderError(f"listing agent pools: {err.message}", cause=err) from err
        except AzureError as err:
            raise unreachable(err, "listing agent pools") from err
        return [self._instance(p) for p in pools if (p.tags or {}).get(NODECLAIM_LABEL)]

    async def begin_delete(self, claim_name: str) -> None:
        try:
            await self._pools.begin_delete(*self._where(), claim_name, polling=False)
        except ResourceNotFoundError:
            return
        except HttpResponseError as err:
            raise classify(err, claim_name) from err
        except AzureError as err:
            raise unreachable(err, f"agent pool {claim_name}") from err

    def _instance(self, pool: AgentPool) -> Instance:
        tags = pool.tags or {}
        created = tags.get(CREATED_TAG)
        return Instance(
            name=str(pool.name),
            instance_type=str(pool.vm_size),
            state=_STATES.get(str(pool.provisioning_state or "").lower(), "creating"),
            claim_name=tags.get(NODECLAIM_LABEL),
            created_at=float(created) if created and created.isdigit() else None,
            labels={AGENTPOOL_LABEL: str(pool.name)},
        )
