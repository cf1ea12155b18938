"""What the NodeClaim lifecycle controller needs from a cloud: start a launch, follow it, find,
list and delete instances. Launches and deletions take minutes on a real cloud, so every call here
returns quickly: `begin_launch` hands back an opaque continuation token that the controller keeps
on the NodeClaim (it survives an operator restart), and `poll_launch` looks at the operation once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kaitopy.api.nodeclaim import NODECLAIM_LABEL as NODECLAIM_LABEL

# Labels every provider puts on what it creates (with NODECLAIM_LABEL), so garbage collection
# can find its instances.
PROVIDER_LABEL = "kaito.sh/node-provider"


@dataclass(frozen=True)
class Taint:
    key: str
    effect: str
    value: str = ""


@dataclass(frozen=True)
class LaunchRequest:
    """Everything a provider needs to launch one node for one NodeClaim."""

    claim_name: str
    instance_type: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: Sequence[Taint] = ()
    # Taints removed once the node is initialized (karpenter.sh/unregistered and the like).
    startup_taints: Sequence[Taint] = ()
    storage_gib: int = 0
    os_sku: str | None = None


@dataclass(frozen=True)
class Instance:
    """A cloud instance as the provider sees it."""

    name: str
    instance_type: str
    state: str  # "creating" | "running" | "deleting" | "failed"
    provider_id: str | None = None
    node_name: str | None = None
    claim_name: str | None = None
    created_at: float | None = None  # unix seconds, when the provider knows it
    labels: Mapping[str, str] = field(default_factory=dict)
    message: str = ""
    """Why a failed instance failed, in the provider's words."""


@dataclass(frozen=True)
class LaunchProgress:
    """One look at a launch: done (with the instance) or still running (with a reason)."""

    instance: Instance | None
    message: str = ""

    @property
    def done(self) -> bool:
        return self.instance is not None


class CloudProviderError(Exception):
    """A provider call failed in a way worth retrying with backoff (throttling, 5xx, network)."""

    def __init__(self, message: str, *, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.__cause__ = cause


class LaunchFailedError(CloudProviderError):
    """The launch can never succeed as asked: retrying burns quota and API calls, so the claim
    is marked Launched=False with `reason` and left for its owner to replace or delete."""

    reason = "LaunchFailed"

    def __init__(self, message: str, *, code: str = "", cause: BaseException | None = None) -> None:
        super().__init__(message, cause=cause)
        self.code = code


class InsufficientCapacityError(LaunchFailedError):
    reason = "InsufficientCapacity"


class QuotaExceededError(LaunchFailedError):
    reason = "QuotaExceeded"


class SkuNotAvailableError(LaunchFailedError):
    reason = "SKUNotAvailable"


class InvalidLaunchRequestError(LaunchFailedError):
    reason = "InvalidRequest"


class CloudProvider(Protocol):
    """The provider interface. Implementations: `kwok` (local clusters) and `azure` (AKS)."""

    name: str

    async def begin_launch(self, request: LaunchRequest) -> str:
        """Start (or adopt, if it already exists) the instance; return a continuation token."""
        ...

    async def poll_launch(self, request: LaunchRequest, token: str) -> LaunchProgress:
        """Look once at the launch the token names. Raises LaunchFailedError when it failed."""
        ...

    async def get(self, claim_name: str) -> Instance | None:
        """The instance launched for this claim, or None once it is gone."""
        ...

    async def list(self) -> list[Instance]:
        """Every instance this provider created (for garbage collection)."""
        ...

    async def begin_delete(self, claim_name: str) -> None:
        """Start deleting; idempotent. `get` returning None confirms it is gone."""
        ...

    async def close(self) -> None: ...
