"""The workspace gauges: each workspace's state from its conditions, counted at scrape time."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kaitopy.controllers.workspace.metrics import (
    STATES,
    register_workspace_metrics,
    workspace_state,
)
from kaitopy.runtime.cache.store import Store
from kaitopy.runtime.metrics import Metrics
from kaitopy.runtime.objects import freeze


def _ws(
    name: str, *conds: tuple[str, str, str], tuning: bool = False, deleting: bool = False, **spec: Any
) -> Any:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "resourceVersion": "1"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    body: dict[str, Any] = {"metadata": meta, **spec}
    if tuning:
        body["tuning"] = {"preset": {"name": "phi-3-mini-4k-instruct"}}
    elif "inference" not in spec:
        body["inference"] = {"preset": {"name": "phi-4"}}
    if conds:
        body["status"] = {"conditions": [{"type": t, "status": s, "reason": r} for t, s, r in conds]}
    return freeze(body)


SERVING = ("WorkspaceSucceeded", "True", "WorkspaceSucceeded")


@pytest.mark.parametrize(
    ("ws", "state"),
    [
        (_ws("new"), "pending"),
        (_ws("nodes", ("ResourceReady", "False", "WaitingForNodes")), "provisioning"),
        (
            _ws("loading", ("ResourceReady", "True", "x"), ("InferenceReady", "False", "WorkloadNotReady")),
            "provisioning",
        ),
        (_ws("serving", ("ResourceReady", "True", "x"), SERVING), "ready"),
        (
            _ws(
                "tuned",
                ("JobStarted", "True", "x"),
                ("WorkspaceSucceeded", "True", "TuningJobSucceeded"),
                tuning=True,
            ),
            "succeeded",
        ),
        (_ws("quota", ("NodeClaimReady", "False", "QuotaExceeded")), "failed"),
        (_ws("bad", ("WorkspaceSucceeded", "False", "InvalidPreset")), "failed"),
        (_ws("job", ("WorkspaceSucceeded", "False", "TuningJobFailed"), tuning=True), "failed"),
        (_ws("gone", SERVING, deleting=True), "deleting"),
        (_ws("gone2", ("WorkspaceDeleting", "True", "Deleting")), "deleting"),
    ],
    ids=lambda v: v if isinstance(v, str) else v["metadata"]["name"],
)
def test_state_from_conditions(ws: Any, state: str) -> None:
    assert workspace_state(ws) == state


def _samples(registry: CollectorRegistry, name: str) -> dict[str, float]:
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.name == name:
            return {next(iter(s.labels.values())): s.value for s in family.samples}
    raise AssertionError(f"{name} not exported")


def test_gauges_follow_the_store() -> None:
    store = Store()
    metrics = Metrics()
    registry = metrics.registry
    # Wired twice (a restarted manager on the same client): one collector, reading the last store.
    register_workspace_metrics(metrics, Store())
    register_workspace_metrics(metrics, store)
    assert _samples(registry, "kaitopy_workspace_count") == dict.fromkeys(STATES, 0.0)
    assert _samples(registry, "kaitopy_workspace_preset_count") == {}

    for ws in (
        _ws("a"),
        _ws("b", ("ResourceReady", "True", "x"), SERVING),
        _ws("c", ("ResourceReady", "True", "x"), SERVING),
        _ws("t", tuning=True),
        _ws("custom", inference={"template": {"spec": {"containers": []}}}),
    ):
        store.upsert(ws)
    counts = _samples(registry, "kaitopy_workspace_count")
    assert counts == {**dict.fromkeys(STATES, 0.0), "pending": 3.0, "ready": 2.0}
    assert _samples(registry, "kaitopy_workspace_preset_count") == {
        "phi-4": 3.0,
        "phi-3-mini-4k-instruct": 1.0,
        "template": 1.0,
    }

    store.delete(_ws("b"))
    assert _samples(registry, "kaitopy_workspace_count")["ready"] == 1.0
    assert _samples(registry, "kaitopy_workspace_preset_count")["phi-4"] == 2.0
