"""What the activator does with one request, decided from numbers alone (pure, table-tested), and the
OpenAI-shaped error bodies of its refusals."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HoldSettings:
    max_queue: int = 100
    """Requests held per set at most while it wakes; more are refused at once (a client retries
    later instead of piling up sockets and memory here)."""
    max_wait_s: float = 600.0
    """How long a request is held at most: a GPU node, its image and the model's weights can take
    several minutes from zero, so ten."""
    retry_after_s: float = 30.0
    """The Retry-After of a refusal while the set wakes: about how often a client should ask again."""
    connect_retry_s: float = 30.0
    """How long the activator keeps trying to connect to a ready member that refuses the connection,
    or does not accept it, before a 502. A member that has just turned Ready can be out of reach for
    a moment through its Service: each node's proxy rules (and the cluster's DNS) follow the new
    EndpointSlice a little later. Only connecting is retried, so nothing of the request was sent."""


class Verdict(enum.Enum):
    FORWARD = "forward"
    """A member is ready: forward now."""
    HOLD = "hold"
    """No member is ready but one is coming (or is asked for): hold the request."""
    QUEUE_FULL = "queue_full"
    """No member is ready and max_queue requests are already held."""
    ASLEEP = "asleep"
    """The set is at zero and does not scale from zero: nothing would ever answer."""


def queue_limit(settings: HoldSettings, set_limit: int | None) -> int:
    """Requests held for one set at most: the set's own max-queue annotation may lower the
    activator's bound, never raise it (the activator's memory and sockets are shared by all sets)."""
    return settings.max_queue if set_limit is None else min(settings.max_queue, set_limit)


def admit(
    *, ready: int, replicas: int, wakes: bool, held: int, settings: HoldSettings, set_limit: int | None = None
) -> Verdict:
    """`ready`: the set's ready members; `replicas`: its spec.replicas; `wakes`: it may scale from
    zero (min-replicas "0"); `held`: requests for it held now; `set_limit`: the set's max-queue."""
    if ready > 0:
        return Verdict.FORWARD
    if replicas == 0 and not wakes:
        return Verdict.ASLEEP
    if held >= queue_limit(settings, set_limit):
        return Verdict.QUEUE_FULL
    return Verdict.HOLD


def retry_after(settings: HoldSettings) -> str:
    """The Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(settings.retry_after_s)))


def openai_error(message: str, type_: str, code: int, param: str | None = None) -> dict[str, Any]:
    """The body OpenAI's API (and vLLM) answers errors with, so clients show the message."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
