"""Node loss: a launched NodeClaim whose instance is gone, or that its provider reports failed,
is deleted so that its owner makes a replacement (Karpenter's garbage collection of claims whose
instance vanished, and its node repair).

A dead instance never comes back by itself, and its pods are lost with it: waiting for the node
lifecycle controller's grace (40 s upstream; minutes where kwok runs thousands of nodes) and then
for the pods' eviction (300 s) only delays the replacement. The provider knows sooner: a VM that
was deleted or whose provisioning failed (Azure), a local node whose kubelet or containerd died.
The claim first gets Ready=False with reason InstanceLost and the provider's words, then is
deleted; termination skips the drain for a lost instance (nothing can run the pods any more) and
force-deletes the pods still bound to the node once it is gone.

Node repair: a node that stays NotReady while its instance runs (a kubelet that hangs or lost its
network on a live VM) is replaced the same way once `node_repair_after_s` has passed, unless more
than `repair_max_fraction` of the launched nodes are unhealthy at once."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from kaitopy.api.nodeclaim import (
    INITIALIZED_LABEL,
    INSTANCE_LOST,
    LAUNCHED,
    NODE_UNHEALTHY,
    NODECLAIM,
    READY,
    REPAIRED_REASONS,
)
from kaitopy.provisioner.cloudprovider import NODECLAIM_LABEL, CloudProvider, CloudProviderError, Instance
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
    reason: str = INSTANCE_LOST


def is_repaired(claim: Obj) -> bool:
    """Whether the provisioner gave this claim's node up (lost or unhealthy): termination then
    skips the drain, since no kubelet there would stop the pods."""
    ready = find_condition((claim.get("status") or {}).get("conditions"), READY) or {}
    return ready.get("status") == "False" and ready.get("reason") in REPAIRED_REASONS


def _initialized(node: Obj | None) -> bool:
    """Whether the node was once initialized (the label stays; the claim's Initialized condition
    follows the node's readiness and drops with it)."""
    labels = ((node or {}).get("metadata") or {}).get("labels") or {}
    return labels.get(INITIALIZED_LABEL) == "true"


def node_unready(node: Obj) -> str | None:
    """Why the node is not Ready ("Ready=Unknown: Kubelet stopped posting node status."), or
    None when it is. A node without a Ready condition has not reported yet: not unhealthy."""
    ready = find_condition((node.get("status") or {}).get("conditions"), "Ready")
    if ready is None or ready.get("status") == "True":
        return None
    detail = str(ready.get("message") or ready.get("reason") or "").strip()
    return f"Ready={ready.get('status')}" + (f": {detail}" if detail else "")


def track_unhealthy(since: Mapping[str, float], unhealthy: Iterable[str], now: float) -> dict[str, float]:
    """When each unhealthy node was first seen so (this process's monotonic clock); a node that
    is healthy again, or gone, is forgotten, so its next bad spell starts from zero."""
    return {name: since.get(name, now) for name in unhealthy}


def repair_budget(launched: int, max_fraction: float) -> int:
    """How many unhealthy nodes may be repaired at once: the allowed share of the launched ones,
    rounded up, and at least one (a one-node pool can still be repaired)."""
    return max(1, math.ceil(launched * max_fraction))


def unhealthy_claims(
    claims: Iterable[Obj],
    nodes: Mapping[str, Obj],
    since: Mapping[str, float],
    now: float,
    after_s: float,
) -> list[Lost]:
    """The live claims whose once-initialized node has been NotReady for `after_s` (by `since`).
    `nodes` maps a claim's name to its node."""
    out = []
    for claim in claims:
        if not is_ours(claim) or is_deleting(claim):
            continue
        name = str(claim["metadata"]["name"])
        node = nodes.get(name)
        why = None if node is None or not _initialized(node) else node_unready(node)
        if node is None or why is None or name not in since:
            continue
        waited = now - since[name]
        if waited >= after_s:
            node_name = node["metadata"]["name"]
            out.append(
                Lost(
                    claim,
                    f"node {node_name} has been NotReady ({why}) for {waited:.0f} s while its instance "
                    "still runs",
                    NODE_UNHEALTHY,
                )
            )
    return out


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


def nodes_by_claim(nodes: Iterable[Obj]) -> dict[str, Obj]:
    out = {}
    for node in nodes:
        claim_name = ((node.get("metadata") or {}).get("labels") or {}).get(NODECLAIM_LABEL)
        if claim_name:
            out[str(claim_name)] = node
    return out


@dataclass(frozen=True)
class Repairs:
    due: list[Lost]
    """The claims to replace now (empty while held)."""
    since: dict[str, float]
    """The unhealthy clock to keep for the next pass."""
    held: bool
    """Some were due but more nodes are unhealthy than the budget allows."""
    budget: int


def decide_repairs(
    claims: list[Obj],
    nodes: Mapping[str, Obj],
    since: Mapping[str, float],
    now: float,
    after_s: float,
    max_fraction: float,
) -> Repairs:
    """One repair pass, decided: update the unhealthy clock, find the claims past the toleration,
    and hold them all while more nodes are unhealthy than `repair_budget` allows."""
    live = [
        c
        for c in claims
        if is_ours(c) and not is_deleting(c) and _initialized(nodes.get(str(c["metadata"]["name"])))
    ]
    bad = [
        str(c["metadata"]["name"])
        for c in live
        if (n := nodes.get(str(c["metadata"]["name"]))) is not None and node_unready(n) is not None
    ]
    clock = track_unhealthy(since, bad, now)
    due = unhealthy_claims(live, nodes, clock, now, after_s)
    budget = repair_budget(len(live), max_fraction)
    held = bool(due) and len(bad) > budget
    return Repairs([] if held else due, clock, held, budget)


class LivenessChecker:
    """Every `liveness_interval_s`, matches launched claims against the provider's instances,
    and their nodes' Ready condition against the repair toleration."""

    def __init__(
        self,
        client: Client,
        provider: CloudProvider,
        claims: Informer,
        recorder: EventRecorder,
        settings: ProvisionerSettings,
        on_lost: Callable[[str], None] | None = None,
        *,
        nodes: Informer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.provider = provider
        self.claims = claims
        self.nodes = nodes
        self.recorder = recorder
        self.settings = settings
        self.on_lost = on_lost
        self.clock = clock
        # Node name -> when this process first saw it NotReady (monotonic): an in-memory clock,
        # so a restart only delays a repair, and the API server's clock never enters the sum.
        self.unhealthy_since: dict[str, float] = {}
        self._repair_held = False

    async def check_once(self) -> list[str]:
        """One pass; returns the claims it deleted."""
        await self.claims.wait_synced()
        # The claims before the instances: a claim launched while the (slow) instance list is in
        # flight is then not in this pass, instead of being judged against a list taken before its
        # instance existed (at 1,000 claims, 20 healthy nodes were taken for lost and replaced).
        claims = self.claims.store.list()
        try:
            instances = await self.provider.list()
        except CloudProviderError as err:
            log.warning("liveness: listing instances failed; will retry", extra={"error": str(err)})
            return []
        lost = lost_claims(claims, instances, self.provider.name)
        gone = {str(x.claim["metadata"]["name"]) for x in lost}
        lost += [x for x in self._unhealthy(claims) if str(x.claim["metadata"]["name"]) not in gone]
        deleted = []
        for x in lost:
            if await self._replace(x):
                deleted.append(str(x.claim["metadata"]["name"]))
        return deleted

    def _unhealthy(self, claims: list[Obj]) -> list[Lost]:
        """Claims past the repair toleration, within the repair budget (none beyond it)."""
        if self.nodes is None or self.settings.node_repair_after_s <= 0:
            return []
        nodes = nodes_by_claim(self.nodes.store.list())
        now = self.clock()
        plan = decide_repairs(
            claims,
            nodes,
            self.unhealthy_since,
            now,
            self.settings.node_repair_after_s,
            self.settings.repair_max_fraction,
        )
        self.unhealthy_since = plan.since
        if plan.held and not self._repair_held:
            log.warning(
                "node repair held: too many nodes are unhealthy at once",
                extra={"unhealthy": len(plan.since), "budget": plan.budget},
            )
        self._repair_held = plan.held
        return plan.due

    async def _replace(self, lost: Lost) -> bool:
        claim = lost.claim
        name = str(claim["metadata"]["name"])
        node = (claim.get("status") or {}).get("nodeName") or name
        if lost.reason == INSTANCE_LOST:
            message = f"node {node} is lost: {lost.why}; deleting the claim so that its owner replaces it"
        else:
            message = f"{lost.why}; deleting the claim so that its owner replaces it"
        log.warning("node lost", extra={"nodeclaim": name, "node": node, "why": lost.why})
        status = thaw(claim.get("status") or {})
        status["conditions"] = set_condition(
            status.get("conditions"),
            READY,
            "False",
            reason=lost.reason,
            message=message,
            now=datetime.now(UTC),
            observed_generation=claim["metadata"].get("generation"),
        )
        with contextlib.suppress(NotFound):
            await patch_status(self.client, NODECLAIM, claim, status)
            await self.recorder.event(claim, "Warning", lost.reason, message, action="Repair")
            await self.client.delete(NODECLAIM, name)
            self.unhealthy_since.pop(name, None)
            if self.on_lost is not None:
                self.on_lost(self.provider.name)
            return True
        return False

    async def run(self) -> None:
        await every(self.settings.liveness_interval_s, self.check_once, "liveness")
