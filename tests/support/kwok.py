"""Simulated GPU nodes for tests: kwok makes nodes with this annotation behave like real ones."""

from __future__ import annotations

from typing import Any


def gpu_node_manifest(
    name: str, *, gpus: int = 1, labels: dict[str, str] | None = None, instance_type: str = "Standard_NC6s_v3"
) -> dict[str, Any]:
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": instance_type,
                "accelerator": "nvidia",
                "type": "kwok",
                **(labels or {}),
            },
        },
        "spec": {},
        "status": {"capacity": capacity, "allocatable": capacity},
    }
