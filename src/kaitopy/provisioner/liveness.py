"""Node loss: a launched NodeClaim whose instance is gone, or that its provider reports failed,
is deleted so that its owner makes a replacement (Karpenter's garbage collection of claims whose
instance vanished, and its node repair).

A dead instance never comes back by itself, and its pods are lost with it: waiting for the node
lifecycle controller's grace (40 s upstream; minutes where kwok runs thousands of nodes) and then
for the pods' eviction (300 s) only delays the replacement. The provider knows sooner: a VM that
was deleted or whose provisioning failed (Azure), a local node whose kubelet or containerd died.
The claim first gets Ready=False with reason InstanceLost and the provider's words, then is
deleted; termination skips the drain for a lost instance (nothing can run the pods any more) and
force-deletes the pods still bound to the node once it is gone."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from kaitopy.api.nodeclaim import INSTANCE_LOST, LAUNCHED, NODECLAIM, READY
from kaitopy.provisioner.cloudprovider import CloudProvider, CloudProviderError, Instance
from kaitopy.provisioner.nodeclaim import is_ours
from kaitopy.provisioner.periodic import every
from kaitopy.provisioner.settings import ProvisionerSettings
from kaitopy.runtime import (
    Client,
    EventRecorder,
    NotFound,
    find_condition,
    is_deleting,
    patch_status,
    set_condition,
    thaw,
)
from kaitopy.runtime.cache.informer import Informer
from kaitopy.runtime.objects import Obj

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lost:
    claim: Obj
    why: str


def lost_claims(claims: Iterable[Obj], instances: Iterable[Instance], provider: str) -> list[Lost]:
    """The launched, live claims whose instance is missing from `instances` or failed. A claim
    still launching is the lifecycle's (it retries or fails the launch), and one being deleted is
    already on its way out."""
    by_claim = {i.claim_name or i.name: i for i in instances}
    out = []
    for claim in claims:
        if not is_ours(claim) or is_deleting(claim):
            continue
        launched = find_condition((claim.get("status") or {}).get("conditions"), LAUNCHED)
        if launched is None or launched.get("status") != "True":
            continue
        instance = by_claim.get(str(claim["metadata"]["name"]))
        if instance is None:
            out.append(Lost(claim, f"its instance no longer exists at {provider}"))
        elif instance.state == "failed":
            out.append(
                Lost(claim, instance.message or f"{provider} reports its instance {instance.name} failed")
            )
    return out


class LivenessChecker:
    """Every `liveness_interval_s`, matches launched claims against the provider's instances."""

    def __init__(
        self,
        client: Client,
        provider: CloudProvider,
        claims: Informer,
        recorder: EventRecorder,
        settings: ProvisionerSettings,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.provider = provider
        self.claims = claims
        self.recorder = recorder
        self.settings = settings
        self.on_lost = on_lost

    async def check_once(self) -> list[str]:
        """One pass; returns the claims it deleted."""
        await self.claims.wait_synced()
        try:
            instances = await self.provider.list()
        except CloudProviderError as err:
            log.warning("liveness: listing instances failed; will retry", extra={"error": str(err)})
            return []
        deleted = []
        for lost in lost_claims(self.claims.store.list(), instances, self.provider.name):
            name = str(lost.claim["metadata"]["name"])
            node = (lost.claim.get("status") or {}).get("nodeName") or name
            message = f"node {node} is lost: {lost.why}; deleting the claim so that its owner replaces it"
            log.warning("node lost", extra={"nodeclaim": name, "node": node, "why": lost.why})
            status = thaw(lost.claim.get("status") or {})
            status["conditions"] = set_condition(
                status.get("conditions"),
                READY,
                "False",
                reason=INSTANCE_LOST,
                message=message,
                now=datetime.now(UTC),
                observed_generation=lost.claim["metadata"].get("generation"),
            )
            with contextlib.suppress(NotFound):
                await patch_status(self.client, NODECLAIM, lost.claim, status)
                await self.recorder.event(lost.claim, "Warning", INSTANCE_LOST, message, action="Repair")
                await self.client.delete(NODECLAIM, name)
                deleted.append(name)
                if self.on_lost is not None:
                    self.on_lost(self.provider.name)
        return deleted

    async def run(self) -> None:
        await every(self.settings.liveness_interval_s, self.check_once, "liveness")
