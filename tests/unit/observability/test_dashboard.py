"""The Grafana dashboard queries only metrics our processes export, under the names they export."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kaitopy.controllers.workspace.metrics import register_workspace_metrics, startup_metrics
from kaitopy.inference.metrics import ServerMetrics
from kaitopy.provisioner.metrics import NodeClaimMetrics
from kaitopy.runtime.cache.store import Store
from kaitopy.runtime.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[3] / "manifests" / "observability" / "grafana-dashboard.json"
KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
}
IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry exposes: counters as *_total, histograms as their three."""
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count")}
        else:
            names.add(family.name)
    return names


def our_registry() -> CollectorRegistry:
    metrics = Metrics()  # the runtime's: client, queues, controllers, leader election
    register_workspace_metrics(metrics, Store())
    metrics.extension("kaitopy_nodeclaim", NodeClaimMetrics)
    startup_metrics(metrics)
    return metrics.registry


# vLLM's own families, which the model server passes through from its engine (vllm_engine.py):
# exported by vLLM, not by us, so named here.
VLLM_FAMILIES = {"vllm:num_requests_waiting", "vllm:num_requests_running"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, keywords,
    label names inside {} or by/without (...), or range durations."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range selectors
    e = re.sub(r"\$\w+", " ", e)  # Grafana variables
    names = set()
    for m in IDENT.finditer(e):
        rest = e[m.end() :].lstrip()
        if rest.startswith("(") or m.group() in KEYWORDS:
            continue
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] == "."):
            continue  # the "e" of 1e3
        names.add(m.group())
    return names


def dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[str]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[str]:
        for p in panels:
            yield from (t["expr"] for t in p.get("targets") or () if t.get("expr"))
            yield from walk(p.get("panels") or [])

    yield from walk(dashboard["panels"])
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query") if isinstance(query, dict) else None
        if text and (m := re.match(r"label_values\((.*),\s*\w+\)$", text)):
            yield m.group(1)


def test_the_parser_finds_names_and_only_names() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, name) (rate(workqueue_work_duration_seconds_bucket"
        '{job=~"$job", name!="x"}[$__rate_interval]))) / on (job) group_left up offset 5m > 1e3'
    )
    assert metric_names(expr) == {"workqueue_work_duration_seconds_bucket", "up"}


def test_every_queried_metric_is_exported() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = list(dashboard_exprs(dashboard))
    assert len(exprs) >= 20
    queried = set().union(*(metric_names(e) for e in exprs))
    exported = exported_names(our_registry()) | exported_names(ServerMetrics().registry) | VLLM_FAMILIES
    assert queried - exported == set(), f"the dashboard queries metrics nothing exports: {queried - exported}"
    # It shows what operators need: the workspace gauges, the launch histogram, the runtime's core.
    for name in (
        "kaitopy_workspace_count",
        "kaitopy_workspace_preset_count",
        "kaitopy_nodeclaim_launch_seconds_bucket",
        "controller_runtime_reconcile_total",
        "controller_runtime_reconcile_errors_total",
        "controller_runtime_reconcile_time_seconds_bucket",
        "workqueue_depth",
        "workqueue_adds_total",
        "workqueue_queue_duration_seconds_bucket",
        "rest_client_requests_total",
        # Cold start, whole and by phase, and the model servers' queue (autoscaling input).
        "kaitopy_workspace_startup_seconds_bucket",
        "kaitopy_workspace_startup_phase_seconds_bucket",
        "kaitopy_inference_queue_depth",
        "vllm:num_requests_waiting",
    ):
        assert name in queried, name


@pytest.mark.parametrize("field", ["uid", "title", "panels", "templating"])
def test_dashboard_is_importable(field: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard[field]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
