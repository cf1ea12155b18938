"""The built-in autoscaler's settings and decision. Pure: the reconciler scrapes the members and
writes the result through the scale subresource.

Settings are annotations on the InferenceSet (kaitopy's own, so a Kaito InferenceSet stays valid
YAML for Kaito and keeps its schema):

    autoscaling.kaitopy.io/enabled: "true"
    autoscaling.kaitopy.io/min-replicas: "1"
    autoscaling.kaitopy.io/max-replicas: "4"              # required when enabled
    autoscaling.kaitopy.io/target-queue-depth: "2"        # waiting requests per member
    autoscaling.kaitopy.io/target-running: "8"            # running requests per member (optional)
    autoscaling.kaitopy.io/target-tokens-per-minute: "6000"  # generated tokens per member (optional)
    autoscaling.kaitopy.io/scale-up-stabilization: "0"    # seconds
    autoscaling.kaitopy.io/scale-down-stabilization: "300"
    autoscaling.kaitopy.io/scale-up-step: "4"             # members added per decision at most
    autoscaling.kaitopy.io/scale-down-step: "1"
    autoscaling.kaitopy.io/export-metrics: "true"         # scrape and export the load, scale or not
    autoscaling.kaitopy.io/idle-seconds: "900"            # with min-replicas "0": idle time to zero
    autoscaling.kaitopy.io/max-queue: "20"                # requests the activator holds for it at most

With min-replicas "0" the set scales to zero once no request has arrived for idle-seconds (the
activator's Lease and the members' own load are the clock, see activity.py), and back to one when
a request reaches the activator (kaitopy.activator), which is the only thing that wakes it: the
autoscaler alone never leaves zero, having no load to read there.

Like the HPA's behaviour: a scale-up takes the lowest recommendation of its window (the load must
hold for the whole window), a scale-down the highest of its window (it must have stayed low).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

PREFIX = "autoscaling.kaitopy.io/"
QUEUE_METRIC = "kaitopy_inference_queue_depth"
RUNNING_METRIC = "kaitopy_inference_running_requests"
TOKENS_METRIC = "kaitopy_inference_completion_tokens_total"
"""Generated tokens (a counter, summed over models): its rate between two scrapes is a member's
tokens per minute."""


class SettingsError(ValueError):
    """An annotation that cannot be used; the message names it and the fix."""


@dataclass(frozen=True)
class AutoscaleSettings:
    min_replicas: int = 1
    """Never fewer members. 0: scale to zero when idle (the activator wakes the set again)."""
    max_replicas: int = 1
    """Never more members."""
    target_queue_depth: float | None = 2.0
    """Waiting requests per member the autoscaler aims at; a queue is the clearest sign of too few."""
    target_running: float | None = None
    """Running requests per member to aim at (unset: not used)."""
    target_tokens_per_minute: float | None = None
    """Generated tokens per minute per member to aim at (unset: not used): the throughput a member
    sustains, for models whose requests are long rather than many."""
    scale_up_stabilization_s: float = 0.0
    """React to load at once: a waiting request costs the user now."""
    scale_down_stabilization_s: float = 300.0
    """A member costs a GPU node and minutes to bring back: only shrink after five quiet minutes."""
    scale_up_step: int = 4
    """Members added per decision at most (each one provisions nodes)."""
    scale_down_step: int = 1
    """Members removed per decision at most."""
    idle_s: float = 900.0
    """With min_replicas 0: no request for this long scales the set to zero (its nodes go). A GPU
    node and a model load take minutes to come back, so a quarter of an hour by default."""
    max_queue: int | None = None
    """Requests the activator holds for this set at most while it has no ready member (per
    activator replica). It can only lower the activator's own --max-queue, never raise it: that
    bound protects the activator (shared by every set) and is the operator's to set. Unset: the
    activator's bound."""


def _number(annotations: Mapping[str, Any], key: str, default: float | None, *, whole: bool) -> float | None:
    raw = annotations.get(PREFIX + key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(
            f'metadata.annotations[{PREFIX}{key}]: {raw!r} is not a number; write e.g. "2"'
        ) from None
    if value < 0 or (whole and value != int(value)) or math.isnan(value):
        kind = "a whole number" if whole else "a number"
        raise SettingsError(f"metadata.annotations[{PREFIX}{key}]: {raw!r} must be {kind} >= 0")
    return value


def settings_of(annotations: Mapping[str, Any] | None) -> AutoscaleSettings | None:
    """The settings, or None when the autoscaler is off. Raises SettingsError naming the annotation."""
    annotations = annotations or {}
    if str(annotations.get(PREFIX + "enabled", "")).lower() != "true":
        return None
    if PREFIX + "max-replicas" not in annotations:
        raise SettingsError(
            f'metadata.annotations[{PREFIX}max-replicas] is required with {PREFIX}enabled: "true"'
        )
    d = AutoscaleSettings()

    def whole(key: str, default: int) -> int:
        return int(_number(annotations, key, default, whole=True) or 0)

    s = AutoscaleSettings(
        min_replicas=whole("min-replicas", d.min_replicas),
        max_replicas=whole("max-replicas", d.max_replicas),
        target_queue_depth=_number(annotations, "target-queue-depth", d.target_queue_depth, whole=False),
        target_running=_number(annotations, "target-running", d.target_running, whole=False),
        target_tokens_per_minute=_number(
            annotations, "target-tokens-per-minute", d.target_tokens_per_minute, whole=False
        ),
        scale_up_stabilization_s=_number(
            annotations, "scale-up-stabilization", d.scale_up_stabilization_s, whole=False
        )
        or 0.0,
        scale_down_stabilization_s=_number(
            annotations, "scale-down-stabilization", d.scale_down_stabilization_s, whole=False
        )
        or 0.0,
        scale_up_step=whole("scale-up-step", d.scale_up_step),
        scale_down_step=whole("scale-down-step", d.scale_down_step),
        idle_s=_number(annotations, "idle-seconds", d.idle_s, whole=False) or 0.0,
        max_queue=None if (q := _number(annotations, "max-queue", None, whole=True)) is None else int(q),
    )
    if s.min_replicas == 0 and s.idle_s <= 0:
        raise SettingsError(
            f'metadata.annotations[{PREFIX}idle-seconds]: must be above 0 with min-replicas "0"; '
            'write e.g. "900"'
        )
    if s.max_replicas < 1:
        raise SettingsError(f"metadata.annotations[{PREFIX}max-replicas]: must be at least 1")
    if s.max_replicas < s.min_replicas:
        raise SettingsError(
            f"metadata.annotations[{PREFIX}max-replicas]: {s.max_replicas} is below "
            f"min-replicas {s.min_replicas}; raise max-replicas"
        )
    if not s.target_queue_depth and not s.target_running and not s.target_tokens_per_minute:
        raise SettingsError(
            f"metadata.annotations[{PREFIX}target-queue-depth], target-running or "
            "target-tokens-per-minute must be above 0"
        )
    if s.max_queue == 0:
        raise SettingsError(
            f"metadata.annotations[{PREFIX}max-queue]: must be at least 1 (a set whose activator holds "
            'no request could never be woken); write e.g. "20", or remove it for the activator\'s bound'
        )
    if s.scale_up_step < 1 or s.scale_down_step < 1:
        raise SettingsError(
            f"metadata.annotations[{PREFIX}scale-up-step/scale-down-step]: must be at least 1"
        )
    return s


def scales_to_zero(annotations: Mapping[str, Any] | None) -> bool:
    """The set opted into scale to zero (the autoscaler with min-replicas "0", valid settings)."""
    try:
        s = settings_of(annotations)
    except SettingsError:
        return False
    return s is not None and s.min_replicas == 0


def held_requests_limit(annotations: Mapping[str, Any] | None) -> int | None:
    """The set's own max-queue for the activator (None: unset, or settings the controller reports
    as invalid, where the activator keeps its own bound)."""
    try:
        s = settings_of(annotations)
    except SettingsError:
        return None
    return None if s is None else s.max_queue


def exports_load(annotations: Mapping[str, Any]) -> bool:
    """Scrape the members and export their load on the controller's /metrics (the autoscaler always
    does; this asks for it without the autoscaler, for KEDA or an HPA on external metrics)."""
    return str(annotations.get(PREFIX + "export-metrics", "")).lower() == "true"


@dataclass(frozen=True)
class SetLoad:
    """A set's members' load at the last scrape."""

    queue_depth: float
    running: float
    answering: int
    tokens_per_minute: float = 0.0
    """Summed over the members whose rate is known (two scrapes of the same counter)."""


@dataclass(frozen=True)
class Sample:
    """One member's load, from its /metrics (None: it did not answer)."""

    queue_depth: float
    running: float
    completion_tokens: float | None = None
    """The member's generated-tokens counter (None: its page has none)."""
    tokens_per_minute: float | None = None
    """The counter's rate since the previous scrape (None: not known yet, or the counter restarted)."""


def tokens_per_minute(previous: tuple[float, float] | None, now: float, total: float | None) -> float | None:
    """A member's rate from its counter at the previous scrape, (time, total), and now. None when
    there is no earlier reading, no time passed, or the counter went down (the server restarted)."""
    if previous is None or total is None:
        return None
    then, before = previous
    if now <= then or total < before:
        return None
    return (total - before) / (now - then) * 60.0


@dataclass(frozen=True)
class Recommendation:
    desired: int
    raw: int
    """What the load alone asks for, before bounds, windows and steps."""
    note: str
    """The numbers behind it, for the Event."""


def raw_recommendation(s: AutoscaleSettings, samples: Sequence[Sample]) -> tuple[int, float, float]:
    """Members the load asks for: enough that each carries at most its target. (raw, queue, running)"""
    queue = sum(x.queue_depth for x in samples)
    running = sum(x.running for x in samples)
    wants = [0]
    if s.target_queue_depth:
        wants.append(math.ceil(queue / s.target_queue_depth))
    if s.target_running:
        wants.append(math.ceil(running / s.target_running))
    if s.target_tokens_per_minute:
        wants.append(math.ceil(summed_tokens_per_minute(samples) / s.target_tokens_per_minute))
    return max(wants), queue, running


def summed_tokens_per_minute(samples: Sequence[Sample]) -> float:
    return sum(x.tokens_per_minute or 0.0 for x in samples)


def without_rate(s: AutoscaleSettings, samples: Sequence[Sample]) -> int:
    """Members whose tokens per minute is not known yet, when that signal is used: like silent
    members they block a scale-down (their throughput could be what keeps the set up)."""
    if not s.target_tokens_per_minute:
        return 0
    return sum(1 for x in samples if x.tokens_per_minute is None)


def recommend(
    s: AutoscaleSettings,
    current: int,
    samples: Sequence[Sample],
    missing: int,
    history: Sequence[tuple[float, int]],
    now: float,
    idle_s: float = 0.0,
) -> Recommendation:
    """The replicas to set. `samples` are the members that answered, `missing` how many did not;
    `history` the earlier (time, raw) recommendations (this one is added by the caller); `idle_s`
    how long since the set last saw a request (only read with min_replicas 0)."""
    raw, queue, running = raw_recommendation(s, samples)
    if s.min_replicas == 0:
        zero = _scale_to_zero(s, current, raw, queue, running, idle_s)
        if zero is not None:
            return zero
        # Above zero the load decides as usual, but never down to zero: only idleness does that.
        s = replace(s, min_replicas=1)
    # Load on members that answered is spread over the ones that will exist: with the whole set busy
    # and nothing answering yet, keep what there is.
    bounded = min(max(raw, s.min_replicas), s.max_replicas)
    window = [
        (t, r) for t, r in history if now - t < max(s.scale_up_stabilization_s, s.scale_down_stabilization_s)
    ]
    tokens = f", {summed_tokens_per_minute(samples):.0f} tokens/min" if s.target_tokens_per_minute else ""
    numbers = (
        f"queue {queue:g} and running {running:g}{tokens} on {len(samples)} members"
        f"{f' ({missing} not answering)' if missing else ''}; load asks for {raw}, "
        f"bounds {s.min_replicas}-{s.max_replicas}"
    )
    desired = current
    if bounded > current:
        ups = [
            min(max(r, s.min_replicas), s.max_replicas)
            for t, r in window
            if now - t < s.scale_up_stabilization_s
        ]
        target = min([bounded, *ups])
        desired = min(max(target, current), current + s.scale_up_step)
    elif bounded < current:
        if missing:
            return Recommendation(
                current, raw, f"hold at {current}: {numbers}; no scale-down without every member's numbers"
            )
        downs = [
            min(max(r, s.min_replicas), s.max_replicas)
            for t, r in window
            if now - t < s.scale_down_stabilization_s
        ]
        target = max([bounded, *downs])
        desired = max(min(target, current), current - s.scale_down_step)
    if current < s.min_replicas or current > s.max_replicas:
        desired = min(max(current, s.min_replicas), s.max_replicas)  # out of bounds: straight back in
    verb = "scale up" if desired > current else "scale down" if desired < current else "hold"
    return Recommendation(desired, raw, f"{verb} {current} -> {desired}: {numbers}")


def _scale_to_zero(
    s: AutoscaleSettings, current: int, raw: int, queue: float, running: float, idle_s: float
) -> Recommendation | None:
    """The decisions only a set that may rest at zero has: stay at zero (the activator, not the
    autoscaler, wakes it: at zero there is no load to read), or go to zero when idle. None: decide
    on the load as usual."""
    if current == 0:
        return Recommendation(0, raw, "hold 0 -> 0: at zero until a request reaches the activator")
    if idle_s >= s.idle_s and queue == 0 and running == 0:
        # Straight to zero, not step by step: nothing has asked for any member for the whole idle time.
        return Recommendation(
            0, raw, f"scale down {current} -> 0: no request for {idle_s:.0f}s (idle-seconds {s.idle_s:g})"
        )
    return None
