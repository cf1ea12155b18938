"""Workspace gauges, computed from the informer cache when Prometheus scrapes: nothing to keep in
step on reconcile, and every replica (leader or not) reports the same, true numbers.

- `kaitopy_workspace_count{state}`: workspaces by state, every state always present (0 included).
- `kaitopy_workspace_preset_count{preset}`: workspaces by the preset they run ("template" for a
  workspace with a pod template instead of a preset).
- `kaitopy_workspace_not_ready_seconds{workspace_namespace,workspace,state}`: for each workspace that is
  pending, provisioning or failed, seconds since it last stopped being Ready (or since its
  creation if it never was); no series for ready, succeeded or deleting ones. What the
  "Workspace not Ready for N minutes" alert reads: it names the workspace.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Final

from prometheus_client import Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from kaitopy.api import reasons
from kaitopy.controllers.workspace import status as st
from kaitopy.controllers.workspace.timeline import PHASES, Timeline
from kaitopy.runtime.cache.store import Store
from kaitopy.runtime.metrics import Metrics
from kaitopy.runtime.objects import Obj

WORKSPACE_COUNT: Final = "kaitopy_workspace_count"
WORKSPACE_PRESET_COUNT: Final = "kaitopy_workspace_preset_count"
WORKSPACE_NOT_READY_SECONDS: Final = "kaitopy_workspace_not_ready_seconds"
NOT_READY_STATES: Final = ("pending", "provisioning", "failed")
STATES: Final = ("pending", "provisioning", "ready", "succeeded", "failed", "deleting")
TEMPLATE_PRESET: Final = "template"

TERMINAL_REASONS: Final = reasons.TERMINAL


def _true(conds: list[Obj], type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conds)


def workspace_state(ws: Obj) -> str:
    """One of STATES, from the workspace's deletion mark and conditions:
    deleting > failed (a terminal reason) > ready (serving) / succeeded (tuning done) >
    provisioning (the controller reported; nodes, model or job still coming) > pending (not yet)."""
    conds = list((ws.get("status") or {}).get("conditions") or ())
    if ws["metadata"].get("deletionTimestamp") or _true(conds, st.WORKSPACE_DELETING):
        return "deleting"
    if any(c.get("status") == "False" and c.get("reason") in TERMINAL_REASONS for c in conds):
        return "failed"
    if _true(conds, st.WORKSPACE_SUCCEEDED):
        return "succeeded" if ws.get("tuning") is not None else "ready"
    return "provisioning" if conds else "pending"


def preset_of(ws: Obj) -> str:
    spec = ws.get("inference") if ws.get("inference") is not None else ws.get("tuning")
    name = ((spec or {}).get("preset") or {}).get("name")
    return str(name) if name else TEMPLATE_PRESET


class WorkspaceCollector(Collector):
    """The workspace gauges over the store of workspaces of the manager it was wired into last."""

    def __init__(self, workspaces: Store | None = None, clock: Callable[[], float] = time.time) -> None:
        self.workspaces = workspaces
        self.clock = clock

    def describe(self) -> Iterator[Metric]:
        # Names only: registering must not read a cache that is still empty.
        yield GaugeMetricFamily(WORKSPACE_COUNT, _COUNT_HELP, labels=["state"])
        yield GaugeMetricFamily(WORKSPACE_PRESET_COUNT, _PRESET_HELP, labels=["preset"])
        yield GaugeMetricFamily(WORKSPACE_NOT_READY_SECONDS, _NOT_READY_HELP, labels=_NOT_READY_LABELS)

    def collect(self) -> Iterator[Metric]:
        items = self.workspaces.list() if self.workspaces is not None else []
        states = Counter(workspace_state(ws) for ws in items)
        count = GaugeMetricFamily(WORKSPACE_COUNT, _COUNT_HELP, labels=["state"])
        for state in STATES:
            count.add_metric([state], float(states.get(state, 0)))
        yield count
        presets = GaugeMetricFamily(WORKSPACE_PRESET_COUNT, _PRESET_HELP, labels=["preset"])
        for preset, n in sorted(Counter(preset_of(ws) for ws in items).items()):
            presets.add_metric([preset], float(n))
        yield presets
        not_ready = GaugeMetricFamily(WORKSPACE_NOT_READY_SECONDS, _NOT_READY_HELP, labels=_NOT_READY_LABELS)
        now = self.clock()
        for ws in items:
            state = workspace_state(ws)
            since = not_ready_since(ws) if state in NOT_READY_STATES else None
            if since is not None:
                md = ws["metadata"]
                not_ready.add_metric([md.get("namespace", ""), md["name"], state], max(now - since, 0.0))
        yield not_ready


def not_ready_since(ws: Obj) -> float | None:
    """When the workspace last stopped being Ready: its WorkspaceSucceeded condition's last
    transition while that is not True, else its creation."""
    conds = (ws.get("status") or {}).get("conditions") or ()
    succeeded = next((c for c in conds if c.get("type") == st.WORKSPACE_SUCCEEDED), None)
    when = (succeeded or {}).get("lastTransitionTime") or ws["metadata"].get("creationTimestamp")
    if not isinstance(when, str):
        return None
    try:
        return datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


_NOT_READY_HELP = (
    "Seconds since each pending, provisioning or failed workspace stopped being Ready (or was created)"
)
# Not "namespace": the scrape's target labels carry the operator's own namespace under that name
# (the ServiceMonitor's relabeling), and Prometheus would rename ours to exported_namespace.
_NOT_READY_LABELS: Final = ["workspace_namespace", "workspace", "state"]
_COUNT_HELP = "Number of workspaces by state (pending, provisioning, ready, succeeded, failed, deleting)"
_PRESET_HELP = "Number of workspaces by model preset"


def _register(registry: CollectorRegistry) -> WorkspaceCollector:
    collector = WorkspaceCollector()
    registry.register(collector)
    return collector


def register_workspace_metrics(metrics: Metrics, workspaces: Store) -> WorkspaceCollector:
    """The workspace gauges in `metrics`' registry, reading `workspaces` (once per registry: wiring
    the same client into another manager points the gauges at that manager's cache)."""
    collector = metrics.extension("kaitopy_workspace", _register)
    collector.workspaces = workspaces
    return collector


STARTUP_SECONDS: Final = "kaitopy_workspace_startup_seconds"
STARTUP_PHASE_SECONDS: Final = "kaitopy_workspace_startup_phase_seconds"
_STARTUP_BUCKETS: Final = (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 450, 600, 900, 1200, 1800, 3600)


class StartupMetrics:
    """How long workspaces took to become Ready, whole and by phase (timeline.PHASES), observed
    once per workspace revision when the controller records its timeline."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.total = Histogram(
            STARTUP_SECONDS,
            "Seconds from a workspace's creation (or a rollout's first pod) to its model being served",
            ["preset"],
            buckets=_STARTUP_BUCKETS,
            registry=registry,
        )
        self.phase = Histogram(
            STARTUP_PHASE_SECONDS,
            "Seconds a workspace's start-up spent in each phase (NodeProvisioning, Scheduling, "
            "ImagePull, WeightsDownload, AdaptersDownload, EngineStart)",
            ["phase"],
            buckets=_STARTUP_BUCKETS,
            registry=registry,
        )
        # Every phase's series from the start, at 0: a series born with its first observation
        # already counted is invisible to rate()/increase() (there is no earlier 0 to rise from).
        for name in PHASES:
            self.phase.labels(phase=name)

    def observe(self, preset: str, timeline: Timeline) -> None:
        self.total.labels(preset=preset).observe(timeline.seconds)
        for p in timeline.phases:
            self.phase.labels(phase=p.name).observe(p.seconds)


def startup_metrics(metrics: Metrics) -> StartupMetrics:
    return metrics.extension("kaitopy_workspace_startup", StartupMetrics)
