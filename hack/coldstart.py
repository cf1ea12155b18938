"""A Workspace's cold start, phase by phase, as the controller recorded it in `status.startup`
(controllers/workspace/timeline.py: the claim's, the pod's and the kubelet's own timestamps), plus
the one phase only the demo sees: pod Ready -> first answer through the Service.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime


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


def phases(kube: Callable[..., str], workspace: str, namespace: str, first_answer: float) -> list[Phase]:
    ws = json.loads(kube("get", "workspace", workspace, "-n", namespace, "-o", "json"))
    startup = (ws.get("status") or {}).get("startup")
    if not startup:
        raise ValueError(f"workspace {workspace} has no start-up timeline in its status")
    applied = ts(startup["startedAt"])
    out = [
        # ImagePull counts time spent pulling; its span may hold gaps between pulls.
        Phase(p["name"], ts(p["startedAt"]) - applied, ts(p["startedAt"]) - applied + float(p["seconds"]))
        for p in startup["phases"]
    ]
    out.append(Phase("FirstAnswer", ts(startup["readyAt"]) - applied, first_answer - applied))
    return out


def render(rows: list[Phase]) -> str:
    lines = [
        "cold start (seconds after `kubectl apply`; status.startup, then the first answer):",
        f"  {'phase':<17} {'from':>7} {'to':>7} {'took':>7}",
    ]
    lines += [f"  {p.name:<17} {p.start:>7.1f} {p.end:>7.1f} {p.seconds:>7.1f}" for p in rows]
    lines.append(f"  {'total':<17} {0.0:>7.1f} {rows[-1].end:>7.1f} {rows[-1].end:>7.1f}")
    return "\n".join(lines)
