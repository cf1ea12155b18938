"""Decide: what one pass of the NodeClaim lifecycle does for a live claim (launch -> register ->
initialize) and the status it writes, from what was observed. Pure: no I/O, and the clock is
passed in, as one number from the provisioner's own clock (see `elapsed`).

Some steps need the answer of an earlier one within the same pass: a launch begun now is polled
at once (the cloud may finish it at once), and the node is judged as registration left it. So
the lifecycle decides, acts on `begin_launch` or `adopt`, observes the result and decides again;
only the last decision's status and events are used."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from kaitopy.provisioner.cloudprovider import LaunchProgress, LaunchRequest
from kaitopy.provisioner.nodeclaim import (
    INITIALIZED,
    INITIALIZED_LABEL,
    LAUNCHED,
    READY,
    REGISTERED,
    NodeUpdate,
    initial_conditions,
    initialization,
    registration_update,
    with_ready,
)
from kaitopy.provisioner.settings import ProvisionerSettings
from kaitopy.runtime import find_condition, set_condition, thaw
from kaitopy.runtime.conditions import Status
from kaitopy.runtime.objects import Obj


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def elapsed(since: float | None, now: float) -> float:
    """Seconds from `since` to `now`, both read from this controller's clock (never the API
    server's: a skew between the two would time a claim out at once, or never). A time ahead of
    `now` (written by a replica whose clock ran ahead) counts as no time at all."""
    return 0.0 if since is None else max(0.0, now - since)


def launch_age(conditions: list[dict[str, Any]], now: float) -> float:
    """How long the claim has been launching, by this controller's clock: from the Launched
    condition's last transition, which the controller wrote when it first saw the claim (Unknown,
    kept through every Launching pass). Not from creationTimestamp: that is the API server's
    clock, and compared with the local one a skew of an hour would be an hour of launch."""
    cond = find_condition(conditions, LAUNCHED)
    return elapsed(_parse_time(cond.get("lastTransitionTime")) if cond else None, now)


@dataclass(frozen=True)
class ClaimObserved:
    """What the lifecycle knows about a live claim in this pass."""

    claim: Obj
    request: LaunchRequest | None
    """The launch the claim asks for; None when its spec cannot be launched (`request_error`)."""
    request_error: str | None = None
    token: str | None = None
    """The launch begun for it (the claim's annotation), None before one is."""
    progress: LaunchProgress | None = None
    """The launch polled in this pass; None when it was not (no token, launched, or failed)."""
    launch_failed: tuple[str, str] | None = None
    """(reason, message) when the cloud said the launch can never succeed."""
    node: Obj | None = None
    """The claim's Node (cache), or as registration just left it."""
    adopted: bool = False
    """`node` is what this pass's registration wrote: it is not registered again."""


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    action: str


@dataclass(frozen=True)
class ClaimDecision:
    status: Mapping[str, Any]
    begin_launch: bool = False
    """Begin the launch (then observe it and decide again)."""
    adopt: NodeUpdate | None = None
    """Register the node: its labels, taints and owner (then decide again on the node written)."""
    label_initialized: bool = False
    events: tuple[Event, ...] = ()
    delete_reason: str | None = None
    """The claim is given up (a timeout): an Event with this reason, then the claim is deleted."""
    notes: tuple[str, ...] = ()
    requeue_after: float | None = None


class ClaimStatus:
    def __init__(self, body: dict[str, Any], now: datetime, generation: int | None) -> None:
        self.body = body
        self.now = now
        self.generation = generation

    @property
    def conditions(self) -> list[dict[str, Any]]:
        return list(self.body.get("conditions") or [])

    def set(self, type_: str, status: Status, reason: str, message: str = "") -> None:
        self.body["conditions"] = set_condition(
            self.conditions,
            type_,
            status,
            reason=reason,
            message=message,
            now=self.now,
            observed_generation=self.generation,
        )

    def is_true(self, type_: str) -> bool:
        cond = find_condition(self.conditions, type_)
        return cond is not None and cond.get("status") == "True"


def decide_claim(obs: ClaimObserved, now_s: float, settings: ProvisionerSettings) -> ClaimDecision:
    """`now_s`: the provisioner's clock, in unix seconds."""
    claim = obs.claim
    now = datetime.fromtimestamp(now_s, UTC)
    generation = (claim.get("metadata") or {}).get("generation")
    body = thaw(claim.get("status") or {})
    if not body.get("conditions"):
        body["conditions"] = initial_conditions(now, generation)
    st = ClaimStatus(body, now, generation)
    events: list[Event] = []
    delete_reason: str | None = None
    notes: tuple[str, ...] = ()
    requeue: float | None = None

    def done(**more: Any) -> ClaimDecision:
        st.body["conditions"] = with_ready(st.conditions, now, generation)
        return ClaimDecision(
            st.body,
            events=tuple(events),
            delete_reason=delete_reason,
            notes=notes,
            requeue_after=requeue,
            **more,
        )

    # -- launch
    if not st.is_true(LAUNCHED):
        launched = find_condition(st.conditions, LAUNCHED)
        if launched is not None and launched.get("status") == "False":
            return done()  # terminal: retrying would hammer the cloud; the owner replaces the claim
        if obs.request is None:
            message = obs.request_error or "the claim cannot be launched"
            st.set(LAUNCHED, "False", "InvalidRequest", message)
            events.append(Event("Warning", "InvalidRequest", message, "Launch"))
            return done()
        if obs.launch_failed is not None:
            reason, message = obs.launch_failed
            st.set(LAUNCHED, "False", reason, message)
            events.append(Event("Warning", reason, message, "Launch"))
            return done()
        if obs.token is None:
            return done(begin_launch=True)
        progress = obs.progress
        if progress is None or progress.instance is None:
            why = progress.message if progress is not None else "launching"
            if launch_age(st.conditions, now_s) > settings.launch_timeout_s:
                message = f"not launched after {settings.launch_timeout_s:.0f}s: {why}"
                st.set(LAUNCHED, "False", "LaunchTimeout", message)
                delete_reason, notes = "LaunchTimeout", (message,)
                return done()
            st.set(LAUNCHED, "Unknown", "Launching", why)
            requeue = settings.poll_interval_s
            return done()
        instance = progress.instance
        if instance.provider_id:
            st.body["providerID"] = instance.provider_id
        st.set(LAUNCHED, "True", "Launched")
        events.append(Event("Normal", "Launched", f"instance {instance.name} launched", "Launch"))

    # -- registration
    node = obs.node
    if node is None:
        cond = find_condition(st.conditions, LAUNCHED)
        launched_at = _parse_time(cond.get("lastTransitionTime")) if cond else None
        if elapsed(launched_at, now_s) > settings.registration_timeout_s:
            message = f"no node joined within {settings.registration_timeout_s:.0f}s of the launch"
            st.set(REGISTERED, "False", "RegistrationTimeout", message)
            delete_reason, notes = "RegistrationTimeout", (message,)
            return done()
        st.set(REGISTERED, "Unknown", "NodeNotFound", "waiting for the node to join the cluster")
        requeue = settings.poll_interval_s
        return done()
    update = registration_update(claim, node)
    if not obs.adopted and update.changes(node):
        return done(adopt=update)
    node_name = str(node["metadata"]["name"])
    if not st.is_true(REGISTERED):
        events.append(Event("Normal", "Registered", f"node {node_name} registered", "Register"))
    st.set(REGISTERED, "True", "Registered")
    st.body["nodeName"] = node_name
    provider_id = (node.get("spec") or {}).get("providerID")
    if provider_id:
        st.body["providerID"] = provider_id

    # -- initialization
    ok, reason, message = initialization(claim, node)
    if not ok:
        st.set(INITIALIZED, "Unknown", reason, message)
        return done()  # a Node event brings the claim back
    node_status = node.get("status") or {}
    st.body["capacity"] = thaw(node_status.get("capacity") or {})
    st.body["allocatable"] = thaw(node_status.get("allocatable") or {})
    label = (node["metadata"].get("labels") or {}).get(INITIALIZED_LABEL) != "true"
    if not st.is_true(INITIALIZED):
        events.append(
            Event("Normal", "Initialized", f"node {node['metadata']['name']} is ready", "Initialize")
        )
    st.set(INITIALIZED, "True", "Initialized")
    return done(label_initialized=label)


def became_true(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Which of Launched and Ready turned True between two statuses (for the launch metrics)."""
    out = []
    for type_ in (LAUNCHED, READY):
        was = find_condition(before.get("conditions"), type_) or {}
        now = find_condition(after.get("conditions"), type_) or {}
        if was.get("status") != "True" and now.get("status") == "True":
            out.append(type_)
    return out
