"""The test Prometheus's stand-in for kubernetes_sd (Debian's build has none) finds model-server
pods as a PodMonitor would, and tests/support/prometheus.py's model_server_job keeps them with the
labels the dashboard and alerts use. Nothing is scraped off this machine: the pod's address is the
API server's bridge address, where no model server listens."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.e2e.operator import free_port
from tests.support import prometheus as prom_support
from tests.support.cluster import Cluster
from tests.support.wait import eventually

pytestmark = pytest.mark.integration


async def test_model_server_pods_are_discovered_with_namespace_pod_and_workspace(
    kube_cluster: Cluster, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if not prom_support.installed():
        pytest.fail("prometheus missing: hack/ensure-packages.sh installs Debian's prometheus")
    host = prom_support.api_host(kube_cluster)
    pods = [
        ("phi-0", {"kaito.sh/workspace": "phi"}, "http"),
        ("other-0", {"app": "other"}, "http"),  # not a workspace's
        ("phi-probe", {"kaito.sh/workspace": "phi"}, "probe"),  # not the server port
    ]
    for name, labels, port in pods:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "containers": [
                    {"name": "server", "image": "x", "ports": [{"name": port, "containerPort": 5000}]}
                ]
            },
        }
        kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
        status = {"status": {"podIP": host, "podIPs": [{"ip": host}]}}
        kube_cluster.kubectl(
            "patch",
            "pod",
            name,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(status),
        )
    job = prom_support.model_server_job([namespace])
    prom = prom_support.Prometheus.start(
        tmp_path_factory.mktemp("prometheus"), kube_cluster, free_port(), extra_jobs=[job]
    )
    try:

        def model_targets() -> list[dict[str, str]]:
            return [t["labels"] for t in prom.targets() if t["labels"]["job"] == "kaitopy-model-server"]

        found = await eventually(lambda: asyncio.to_thread(model_targets), timeout=30, what="model target")
        assert found == [
            {
                "job": "kaitopy-model-server",
                "instance": f"{host}:5000",
                "namespace": namespace,
                "pod": "phi-0",
                "container": "server",
                "workspace": "phi",
            }
        ]
    finally:
        prom.stop()
