"""Where a workspace's start-up time went, from what the cluster recorded: the node claim's
creation and readiness, the pod's scheduling, the kubelet's image pulls, the init containers that
fetch weights and adapters, and the model container's start until its first passing probe.

Pure: the reconciler hands in the objects (and the pod's kubelet events) once the workspace is
Ready, and writes the result to `status.startup`. Times in the API are whole seconds (RFC 3339),
except the kubelet's pull durations, which it reports to the millisecond in its events."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kaitopy.api import nodeclaim as nc
from kaitopy.runtime.objects import Obj

NODE_PROVISIONING = "NodeProvisioning"
SCHEDULING = "Scheduling"
IMAGE_PULL = "ImagePull"
WEIGHTS_DOWNLOAD = "WeightsDownload"
ADAPTERS_DOWNLOAD = "AdaptersDownload"
ENGINE_START = "EngineStart"
PHASES = (NODE_PROVISIONING, SCHEDULING, IMAGE_PULL, WEIGHTS_DOWNLOAD, ADAPTERS_DOWNLOAD, ENGINE_START)
"""In the order they begin. EngineStart runs from the model container's start to the pod's first
passing readiness probe: loading the weights into memory, warming the engine up, the first probe."""

WEIGHTS_CONTAINER = "weights"
ADAPTER_CONTAINER_PREFIX = "adapter-"


@dataclass(frozen=True)
class Phase:
    name: str
    start: datetime
    end: datetime
    seconds: float
    """The phase's own duration: end - start, except for ImagePull, whose pulls may be apart in
    time (init images first, then the server's) and which counts only the time spent pulling."""


@dataclass(frozen=True)
class Timeline:
    revision: str
    start: datetime
    ready: datetime
    phases: tuple[Phase, ...]

    @property
    def seconds(self) -> float:
        return (self.ready - self.start).total_seconds()

    def to_status(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "startedAt": _fmt(self.start),
            "readyAt": _fmt(self.ready),
            "seconds": round(self.seconds, 3),
            "phases": [
                {
                    "name": p.name,
                    "startedAt": _fmt(p.start),
                    "finishedAt": _fmt(p.end),
                    "seconds": round(p.seconds, 3),
                }
                for p in self.phases
            ],
        }


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _fmt(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|μs|ms|s|m|h)")


def go_duration(text: str) -> float | None:
    """A Go `time.Duration` string ("26.3s", "1m2.5s", "850ms") in seconds; None if it is not one."""
    parts = _GO_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _GO_UNITS[u] for n, u in parts)


_PULLED = re.compile(r'Successfully pulled image "[^"]*" in (\S+?) ')


def pull_seconds(events: Sequence[Obj]) -> tuple[float, datetime | None, datetime | None]:
    """(time spent pulling, first pull's start, last pull's end) from a pod's kubelet events.
    An image already on the node costs nothing and is not counted."""
    total = 0.0
    first: datetime | None = None
    last: datetime | None = None
    for e in events:
        if e.get("reason") != "Pulled":
            continue
        m = _PULLED.search(str(e.get("message") or e.get("note") or ""))
        took = go_duration(m.group(1)) if m else None
        end = _event_time(e)
        if took is None or end is None:
            continue
        total += took
        begin = end - timedelta(seconds=took)
        first = begin if first is None or begin < first else first
        last = end if last is None or end > last else last
    return total, first, last


def _event_time(e: Obj) -> datetime | None:
    return (
        parse_time(e.get("lastTimestamp"))
        or parse_time(e.get("eventTime"))
        or parse_time(e.get("firstTimestamp"))
        or parse_time((e.get("metadata") or {}).get("creationTimestamp"))
    )


def _condition_time(obj: Obj, type_: str) -> datetime | None:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if c.get("type") == type_ and c.get("status") == "True":
            return parse_time(c.get("lastTransitionTime"))
    return None


def ready_time(pod: Obj) -> datetime | None:
    """When the pod last became Ready; None while it is not."""
    return _condition_time(pod, "Ready")


def summary(timeline: Timeline) -> str:
    """One line for an event: the total, then each phase."""
    parts = ", ".join(f"{p.name} {p.seconds:.1f}s" for p in timeline.phases)
    return f"ready {timeline.seconds:.0f}s after the start-up began ({parts})"


def _span(statuses: Sequence[Obj]) -> tuple[datetime, datetime] | None:
    """From the first start to the last finish of terminated (init) containers."""
    starts, ends = [], []
    for cs in statuses:
        term = (cs.get("state") or {}).get("terminated") or {}
        start, end = parse_time(term.get("startedAt")), parse_time(term.get("finishedAt"))
        if start and end:
            starts.append(start)
            ends.append(end)
    return (min(starts), max(ends)) if starts else None


def _phase(name: str, start: datetime | None, end: datetime | None) -> Phase | None:
    if start is None or end is None or end < start:
        return None
    return Phase(name, start, end, (end - start).total_seconds())


def startup_timeline(
    *,
    revision: str,
    start: datetime,
    claims: Sequence[Obj],
    pod: Obj,
    events: Sequence[Obj],
) -> Timeline | None:
    """The timeline of `pod` (Ready, of `revision`) from `start` (the workspace's creation for its
    first start, the rollout's first pod for a later revision). Claims that were ready before
    `start` are not part of this start-up. None when the pod is not Ready."""
    ready = _condition_time(pod, "Ready")
    if ready is None:
        return None
    phases: list[Phase | None] = []
    fresh = [c for c in claims if (parse_time(c["metadata"].get("creationTimestamp")) or start) >= start]
    if fresh:
        created = min(parse_time(c["metadata"].get("creationTimestamp")) or start for c in fresh)
        claim_ready = [_condition_time(c, nc.READY) for c in fresh]
        if all(claim_ready):
            phases.append(_phase(NODE_PROVISIONING, created, max(t for t in claim_ready if t)))
    status = pod.get("status") or {}
    phases.append(
        _phase(
            SCHEDULING,
            parse_time(pod["metadata"].get("creationTimestamp")),
            _condition_time(pod, "PodScheduled"),
        )
    )
    pulled, pull_start, pull_end = pull_seconds(events)
    if pull_start is not None and pull_end is not None:
        phases.append(Phase(IMAGE_PULL, pull_start, pull_end, pulled))
    init = list(status.get("initContainerStatuses") or ())
    weights = _span([cs for cs in init if cs.get("name") == WEIGHTS_CONTAINER])
    if weights:
        phases.append(_phase(WEIGHTS_DOWNLOAD, *weights))
    adapters = _span([cs for cs in init if str(cs.get("name", "")).startswith(ADAPTER_CONTAINER_PREFIX)])
    if adapters:
        phases.append(_phase(ADAPTERS_DOWNLOAD, *adapters))
    started = [
        parse_time(((cs.get("state") or {}).get("running") or {}).get("startedAt"))
        for cs in status.get("containerStatuses") or ()
    ]
    if started and all(started):
        phases.append(_phase(ENGINE_START, max(t for t in started if t), ready))
    kept = sorted((p for p in phases if p is not None), key=lambda p: (PHASES.index(p.name), p.start))
    return Timeline(revision, start, ready, tuple(kept))
