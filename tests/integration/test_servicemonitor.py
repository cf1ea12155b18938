"""The optional ServiceMonitor component: kustomize renders it onto the kwok overlay, and each
ServiceMonitor selects exactly the metrics Service of its process, on a port that Service has.
(The monitoring.coreos.com CRDs are not on the test cluster, so this is a build-only check.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.support.cluster import Cluster

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_servicemonitors_select_the_metrics_services(kube_cluster: Cluster) -> None:
    rendered = kube_cluster.kubectl("kustomize", str(MANIFESTS / "overlays" / "kwok-servicemonitor"))
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(rendered) if d]
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert sorted(m["metadata"]["name"] for m in monitors) == [
        "kaitopy-activator",
        "kaitopy-controller",
        "kaitopy-provisioner",
    ]
    # The controller and the provisioner have a metrics Service each; the activator's one Service
    # carries its traffic port and its metrics port.
    expected = {
        "kaitopy-activator": "kaitopy-activator",
        "kaitopy-controller": "kaitopy-controller-metrics",
        "kaitopy-provisioner": "kaitopy-provisioner-metrics",
    }
    services = [d for d in docs if d["kind"] == "Service"]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for monitor in monitors:
        spec = monitor["spec"]
        port = spec["endpoints"][0]["port"]
        scraped = [
            s
            for s in services
            if s["metadata"]["namespace"] in spec["namespaceSelector"]["matchNames"]
            and _matches(spec["selector"]["matchLabels"], s["metadata"].get("labels") or {})
            and any(p.get("name") == port for p in s["spec"]["ports"])
        ]
        assert [s["metadata"]["name"] for s in scraped] == [expected[monitor["metadata"]["name"]]]
        # The Service's target port is the container port that serves /metrics.
        (target,) = [p["targetPort"] for p in scraped[0]["spec"]["ports"] if p["name"] == port]
        container = deployments[monitor["metadata"]["name"]]["spec"]["template"]["spec"]["containers"][0]
        assert target in {p["name"] for p in container["ports"]}
        assert spec["endpoints"][0]["path"] == "/metrics"
    # The component adds only the monitors: the kwok overlay is otherwise unchanged.
    plain = [
        d
        for d in yaml.safe_load_all(kube_cluster.kubectl("kustomize", str(MANIFESTS / "overlays" / "kwok")))
        if d
    ]
    assert [d for d in docs if d["kind"] != "ServiceMonitor"] == plain
