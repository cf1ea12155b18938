"""The kwok provider against the real control plane: a launch makes a GPU node kwok keeps Ready."""

from __future__ import annotations

import uuid

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.api_client import ApiClient

from kaitopy.provisioner.cloudprovider import LaunchRequest, QuotaExceededError, Taint
from kaitopy.provisioner.kwok import KwokProvider, KwokSettings, NodeShape
from kaitopy.runtime import Client
from tests.support.wait import eventually

A100 = NodeShape(
    capacity={"cpu": "24", "memory": "220Gi", "pods": "110", "nvidia.com/gpu": "1"},
    labels={"nvidia.com/gpu.product": "NVIDIA-A100-PCIE-80GB", "nvidia.com/gpu.memory": "81920"},
)


def shapes(sku: str) -> NodeShape:
    if sku != "Standard_NC24ads_A100_v4":
        raise KeyError(sku)
    return A100


def request(name: str) -> LaunchRequest:
    return LaunchRequest(
        claim_name=name,
        instance_type="Standard_NC24ads_A100_v4",
        labels={"kaito.sh/workspace": "phi"},
        taints=[Taint("sku", "NoSchedule", "gpu")],
        startup_taints=[Taint("karpenter.sh/unregistered", "NoExecute")],
    )


async def test_launch_creates_a_ready_gpu_node_after_the_delay(api_client: ApiClient) -> None:
    provider = KwokProvider(Client(api_client), shapes, KwokSettings(launch_delay_s=1.0))
    name = f"k{uuid.uuid4().hex[:10]}"
    req = request(name)
    try:
        token = await provider.begin_launch(req)
        first = await provider.poll_launch(req, token)
        assert not first.done and "left" in first.message
        assert await provider.get(name) is None
        done = await eventually(
            lambda: provider.poll_launch(req, token), until=lambda p: p.done, timeout=10, what="launch done"
        )
        assert done.instance is not None and done.instance.provider_id == f"kwok://{name}"
        again = await provider.poll_launch(req, token)  # a restart re-polls: same node, no error
        assert again.instance is not None and again.instance.name == name
        node = await eventually(
            lambda: client.CoreV1Api(api_client).read_node(name),
            until=lambda n: any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or []),
            timeout=30,
            what="kwok node Ready",
        )
        assert node.status.allocatable["nvidia.com/gpu"] == "1"
        assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-A100-PCIE-80GB"
        assert {(t.key, t.effect) for t in node.spec.taints} >= {
            ("sku", "NoSchedule"),
            ("karpenter.sh/unregistered", "NoExecute"),
        }
        assert [i.name for i in await provider.list() if i.name == name] == [name]
    finally:
        await provider.begin_delete(name)
    await eventually(lambda: provider.get(name), until=lambda i: i is None, timeout=30, what="node gone")
    await provider.begin_delete(name)  # idempotent


async def test_injected_quota_failure_is_terminal(api_client: ApiClient) -> None:
    settings = KwokSettings(failures=KwokSettings.parse_failures(["Standard_NC24ads_A100_v4=QuotaExceeded"]))
    provider = KwokProvider(Client(api_client), shapes, settings)
    with pytest.raises(QuotaExceededError, match="Standard_NC24ads_A100_v4"):
        await provider.begin_launch(request(f"k{uuid.uuid4().hex[:10]}"))


def test_failure_specs_are_validated() -> None:
    with pytest.raises(ValueError, match="REASON one of"):
        KwokSettings.parse_failures(["Standard_NC6s_v3=Bogus"])
