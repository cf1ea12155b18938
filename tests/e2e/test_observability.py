"""A real Prometheus scrapes the operator (found through kubernetes_sd, as the shipped
ServiceMonitors imply), and every dashboard panel's query returns data after a workload ran."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from kaitopy.runtime import Client
from tests.e2e.conftest import Observed
from tests.e2e.test_workspace import apply, client, delete_and_wait, phi3, wait_condition
from tests.support import dashboards
from tests.support.cluster import Cluster
from tests.support.wait import eventually

__all__ = ["client"]

pytestmark = pytest.mark.e2e


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
