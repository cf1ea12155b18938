"""A real Prometheus scrapes the operator (found through kubernetes_sd, as the shipped
ServiceMonitors imply), and every dashboard panel's query returns data after a workload ran."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from kaitopy.runtime import Client
from tests.e2e.conftest import Observed
from tests.e2e.test_workspace import (
    allow_no_services,
    apply,
    client,
    delete_and_wait,
    phi3,
    wait_condition,
)
from tests.support import dashboards, render
from tests.support.cluster import Cluster
from tests.support.wait import eventually

__all__ = ["client"]

pytestmark = pytest.mark.e2e
ALERTS = Path(__file__).resolve().parents[2] / "manifests" / "observability" / "alerts"


async def test_operator_targets_are_discovered_and_every_dashboard_panel_has_data(
    observed_operator: Observed, kube_cluster: Cluster, client: Client, namespace: str
) -> None:
    prom = observed_operator.prometheus

    def up() -> list[dict[str, str]]:
        return [r["metric"] for r in prom.query("up == 1")]

    found = await eventually(
        lambda: asyncio.to_thread(up),
        until=lambda ms: (
            {m.get("job") for m in ms} >= {"kaitopy-controller-metrics", "kaitopy-provisioner-metrics"}
        ),
        timeout=30,
        what="both operator processes scraped",
    )
    # The ServiceMonitor's target labels, taken from the discovered EndpointSlice's Service.
    for m in found:
        assert m["namespace"] == "kaito-system" and m["endpoint"] == "metrics", m
        assert m["service"] == m["job"], m

    start = time.time()
    ws = phi3("observed", namespace)
    apply(kube_cluster, ws)
    await wait_condition(client, "observed", namespace, "WorkspaceSucceeded")
    # A real workload outlives several scrapes; on kwok the whole life can be shorter than one, and
    # a gauge of live workspaces would then never be seen. Delete only after the controller was
    # scraped while the workspace was Ready (`up`'s timestamp is the scrape's own time).
    ready_at = time.time()

    def last_scrape() -> float:
        found = prom.query('max(timestamp(up{job="kaitopy-controller-metrics"}))')
        return float(found[0]["value"][1]) if found else 0.0

    await eventually(
        lambda: asyncio.to_thread(last_scrape),
        until=lambda t: t > ready_at,
        timeout=30,
        what="a scrape of the controller while the workspace is Ready",
    )
    await delete_and_wait(client, kube_cluster, "observed", namespace)
    await asyncio.sleep(3)  # a few scrapes after the deletion
    end = time.time()

    # As Grafana draws a panel: the query over the time range, one point per step; a panel has
    # data when some point of some series is a number.
    missing = []
    for panel in dashboards.panels():
        for expr in panel.queries:
            series = prom.query_range(expr, start, end, step=1)  # raises on a query Prometheus refuses
            if panel.needs_model_server:
                continue
            if not any(not math.isnan(float(v)) for s in series for _, v in s["values"]):
                missing.append(f"{panel.title!r}: {expr} -> {series}")
    assert not missing, "panels without data:\n" + "\n".join(missing)
    png = render.requested("dashboard-operator")
    if png is not None:
        drawn = [p for p in dashboards.panels() if not p.needs_model_server]
        title = "kaitopy dashboard, operator panels: a workspace created, Ready and deleted on kwok"
        print("rendered", render.render(prom, drawn, start - 5, end, png, title))


def shortened(alert: str, threshold: str, short: str, tmp: Path) -> Path:
    """A test-only copy of one shipped alert, its threshold and `for` shortened to seconds: the
    same expression otherwise, so it is the shipped rule's logic that fires."""
    source = yaml.safe_load((ALERTS / "kaitopy.rules.yaml").read_text())
    rule = next(r for g in source["groups"] for r in g["rules"] if r.get("alert") == alert)
    assert threshold in rule["expr"], (threshold, rule["expr"])
    rule = {**rule, "expr": rule["expr"].replace(threshold, short), "for": "1s"}
    path = tmp / f"{alert}.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "test-only", "rules": [rule]}]}))
    return path


async def test_workspace_not_ready_alert_fires_on_the_live_prometheus(
    observed_operator: Observed, kube_cluster: Cluster, client: Client, namespace: str, tmp_path: Path
) -> None:
    prom = observed_operator.prometheus
    prom.load_rules(shortened("KaitopyWorkspaceNotReady", "> 1800", "> 3", tmp_path))
    # No Service may be created here: the workspace can never be served.
    await allow_no_services(kube_cluster, client, namespace)
    apply(kube_cluster, phi3("stuck", namespace))

    def firing() -> list[dict[str, Any]]:
        return [a for a in prom.alerts() if a["state"] == "firing"]

    alerts = await eventually(
        lambda: asyncio.to_thread(firing), timeout=60, interval=1, what="KaitopyWorkspaceNotReady firing"
    )
    # The workspace's namespace survives the scrape (a label named "namespace" would not: the
    # target's own, kaito-system, takes that name).
    (alert,) = alerts
    assert alert["labels"]["alertname"] == "KaitopyWorkspaceNotReady"
    assert alert["labels"]["workspace_namespace"] == namespace and alert["labels"]["workspace"] == "stuck"
    assert f"kaitopy status stuck -n {namespace}" in alert["annotations"]["description"]
    # And it clears once the workspace is gone (the series ends with it).
    await delete_and_wait(client, kube_cluster, "stuck", namespace)
    await eventually(
        lambda: asyncio.to_thread(firing),
        until=lambda a: a == [],
        timeout=60,
        interval=1,
        what="alert cleared",
    )
