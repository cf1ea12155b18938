"""What a simulated (kwok) node of an instance type looks like, from the GPU-SKU catalog."""

from __future__ import annotations

from collections.abc import Callable

from kaitopy.provisioner.kwok import NodeShape

# The catalog describes GPUs, not host CPUs and memory; simulated nodes get a host large enough
# for any model server pod (real GPU VMs have 6-96 vCPUs and 110-1900 GiB).
HOST_CPU = "32"
HOST_MEMORY = "256Gi"
HOST_EPHEMERAL = "1024Gi"


def shape(gpu_count: int, gpu_memory_gib: float, gpu_model: str) -> NodeShape:
    per_gpu_mib = int(gpu_memory_gib * 1024 / max(gpu_count, 1))
    return NodeShape(
        capacity={
            "cpu": HOST_CPU,
            "memory": HOST_MEMORY,
            "ephemeral-storage": HOST_EPHEMERAL,
            "pods": "110",
            "nvidia.com/gpu": str(gpu_count),
        },
        labels={
            "accelerator": "nvidia",
            "nvidia.com/gpu.product": gpu_model,
            "nvidia.com/gpu.count": str(gpu_count),
            "nvidia.com/gpu.memory": str(per_gpu_mib),
        },
    )


def catalog_shapes() -> Callable[[str], NodeShape]:
    """A lookup from instance type to node shape over the packaged GPU-SKU catalog; an unknown
    instance type raises the catalog's error, which names the supported ones."""
    from kaitopy.presets import Catalog

    catalog = Catalog.load()

    def shape_for(instance_type: str) -> NodeShape:
        sku = catalog.sku(instance_type)
        return shape(sku.gpu_count, sku.gpu_memory_gib, sku.gpu_model)

    return shape_for
