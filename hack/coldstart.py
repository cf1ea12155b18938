"""A Workspace's cold start on a real node, phase by phase, read back from the API server: the
objects' own timestamps and the kubelet's events. (Second resolution: that is what the API keeps.)

    node start      NodeClaim created        -> Node Ready
    image pull      kubelet starts pulling    -> model-server image pulled (its own measure)
    weights pull    weights init container started -> finished
    engine start    model container started   -> pod Ready (readiness probe passed)
    first answer    pod Ready                 -> first answer through the Service (measured here)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

PULLED = re.compile(r'Successfully pulled image "([^"]+)" in ([0-9.]+)(ms|s)')


@dataclass(frozen=True)
class Phase:
    name: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def ts(value: str | None) -> float:
    if not value:
        raise ValueError("missing timestamp")
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def condition_time(obj: dict[str, Any], type_: str) -> float:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if c.get("type") == type_ and c.get("status") == "True":
            return ts(c.get("lastTransitionTime"))
    raise ValueError(f"{obj['metadata']['name']} has no {type_}=True condition")


def phases(kube: Callable[..., str], workspace: str, namespace: str, first_answer: float) -> list[Phase]:
    def get(*args: str) -> Any:
        return json.loads(kube("get", *args, "-o", "json"))

    ws = get("workspace", workspace, "-n", namespace)
    applied = ts(ws["metadata"]["creationTimestamp"])
    claims = get("nodeclaims", "-l", f"kaito.sh/workspace={workspace}")["items"]
    pods = get("pods", "-n", namespace, "-l", f"kaito.sh/workspace={workspace}")["items"]
    if not claims or not pods:
        raise ValueError(f"workspace {workspace} has no NodeClaim or no pod to time")
    claim, pod = claims[0], pods[0]
    node = get("node", claim["status"]["nodeName"])
    out = [Phase("node start", ts(claim["metadata"]["creationTimestamp"]), condition_time(node, "Ready"))]

    events = get(
        "events", "-n", namespace, "--field-selector", f"involvedObject.name={pod['metadata']['name']}"
    )
    image = pod["spec"]["containers"][0]["image"]
    for event in events["items"]:
        match = PULLED.search(event.get("message") or "")
        if event.get("reason") == "Pulled" and match and match.group(1) == image:
            took = float(match.group(2)) / (1000 if match.group(3) == "ms" else 1)
            end = ts(event.get("lastTimestamp") or event.get("eventTime"))
            out.append(Phase("image pull", end - took, end))
    for status in pod["status"].get("initContainerStatuses") or ():
        done = (status.get("state") or {}).get("terminated") or {}
        if status["name"] == "weights" and done:
            out.append(Phase("weights pull", ts(done["startedAt"]), ts(done["finishedAt"])))
    model = next(s for s in pod["status"]["containerStatuses"] if s["name"] == "model")
    started = ts(model["state"]["running"]["startedAt"])
    ready = condition_time(pod, "Ready")
    out.append(Phase("engine start", started, ready))
    out.append(Phase("first answer", ready, first_answer))
    return [Phase(p.name, p.start - applied, p.end - applied) for p in out]


def render(rows: list[Phase]) -> str:
    lines = [
        "cold start (seconds after `kubectl apply`):",
        f"  {'phase':<14} {'from':>7} {'to':>7} {'took':>7}",
    ]
    lines += [f"  {p.name:<14} {p.start:>7.1f} {p.end:>7.1f} {p.seconds:>7.1f}" for p in rows]
    lines.append(f"  {'total':<14} {0.0:>7.1f} {rows[-1].end:>7.1f} {rows[-1].end:>7.1f}")
    return "\n".join(lines)
