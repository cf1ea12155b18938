"""Proves the local control plane is real and complete: the scheduler places a GPU pod on a
simulated GPU node, kwok makes it Ready, and the Job controller sees a Job's pod complete."""

from __future__ import annotations

import uuid
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.api_client import ApiClient

from tests.support.cluster import Cluster
from tests.support.kwok import gpu_node_manifest
from tests.support.wait import eventually


async def test_versions_are_the_pinned_ones(api_client: ApiClient) -> None:
    info = await client.VersionApi(api_client).get_code()
    assert info.git_version.startswith("v1.33."), info.git_version


async def test_gpu_deployment_is_scheduled_on_the_gpu_node_and_ready(
    api_client: ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    apps = client.AppsV1Api(api_client)
    node_name = f"gpu-{uuid.uuid4().hex[:8]}"
    await core.create_node(gpu_node_manifest(node_name, labels={"test-pool": node_name}))
    try:
        await eventually(
            lambda: core.read_node(node_name),
            until=lambda n: any(
                c.type == "Ready" and c.status == "True" for c in (n.status.conditions or [])
            ),
            timeout=60,
            what=f"node {node_name} Ready (kwok)",
        )
        labels = {"app": "gpu-user"}
        deployment: dict[str, Any] = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "gpu-user"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "nodeSelector": {"test-pool": node_name},
                        "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists"}],
                        "containers": [
                            {
                                "name": "main",
                                "image": "example.invalid/gpu-user:1",
                                "resources": {"limits": {"nvidia.com/gpu": "1"}},
                            }
                        ],
                    },
                },
            },
        }
        await apps.create_namespaced_deployment(namespace, deployment)
        pods = await eventually(
            lambda: core.list_namespaced_pod(namespace, label_selector="app=gpu-user"),
            until=lambda pl: (
                len(pl.items) == 1
                and pl.items[0].spec.node_name == node_name
                and any(
                    c.type == "Ready" and c.status == "True" for c in (pl.items[0].status.conditions or [])
                )
            ),
            timeout=90,
            what="the GPU pod scheduled to the GPU node and Ready",
        )
        assert pods.items[0].spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
        dep = await eventually(
            lambda: apps.read_namespaced_deployment("gpu-user", namespace),
            until=lambda d: d.status.ready_replicas == 1,
            timeout=60,
            what="deployment ready replicas",
        )
        assert dep.status.available_replicas == 1
    finally:
        await core.delete_node(node_name)


async def test_gpu_request_beyond_capacity_stays_pending(api_client: ApiClient, namespace: str) -> None:
    """The scheduler really accounts for nvidia.com/gpu: a second GPU pod on a 1-GPU node waits."""
    core = client.CoreV1Api(api_client)
    node_name = f"gpu-{uuid.uuid4().hex[:8]}"
    await core.create_node(gpu_node_manifest(node_name, labels={"test-pool": node_name}))
    try:

        def pod(name: str) -> dict[str, Any]:
            return {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name},
                "spec": {
                    "nodeSelector": {"test-pool": node_name},
                    "containers": [
                        {
                            "name": "main",
                            "image": "example.invalid/x:1",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                },
            }

        await core.create_namespaced_pod(namespace, pod("first"))
        await eventually(
            lambda: core.read_namespaced_pod("first", namespace),
            until=lambda p: p.status.phase == "Running",
            timeout=60,
            what="first pod Running",
        )
        await core.create_namespaced_pod(namespace, pod("second"))
        second = await eventually(
            lambda: core.read_namespaced_pod("second", namespace),
            until=lambda p: any(
                c.type == "PodScheduled" and c.status == "False" and "nvidia.com/gpu" in (c.message or "")
                for c in (p.status.conditions or [])
            ),
            timeout=60,
            what="second pod unschedulable for lack of nvidia.com/gpu",
        )
        assert second.spec.node_name is None
    finally:
        await core.delete_node(node_name)


async def test_job_runs_to_completion(api_client: ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    batch = client.BatchV1Api(api_client)
    node_name = f"cpu-{uuid.uuid4().hex[:8]}"
    await core.create_node(gpu_node_manifest(node_name, gpus=0, labels={"test-pool": node_name}))
    try:
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "once"},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "nodeSelector": {"test-pool": node_name},
                        "containers": [{"name": "main", "image": "example.invalid/job:1"}],
                    }
                },
            },
        }
        await batch.create_namespaced_job(namespace, job)
        done = await eventually(
            lambda: batch.read_namespaced_job("once", namespace),
            until=lambda j: (j.status.succeeded or 0) == 1,
            timeout=90,
            what="job succeeded",
        )
        assert any(c.type == "Complete" and c.status == "True" for c in done.status.conditions)
    finally:
        await core.delete_node(node_name)


def test_kubectl_reaches_the_cluster(kube_cluster: Cluster) -> None:
    out = kube_cluster.kubectl("get", "--raw", "/readyz?verbose")
    assert "readyz check passed" in out
