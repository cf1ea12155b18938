"""The series the alerts read (manifests/observability/alerts): which objects they report, and
their values."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kaitopy.controllers.workspace.metrics import WorkspaceCollector
from kaitopy.provisioner.cloudprovider import Instance
from kaitopy.provisioner.garbage import GarbageCollector
from kaitopy.provisioner.metrics import LeakMetrics, NodeClaimAgeCollector
from kaitopy.provisioner.settings import ProvisionerSettings
from kaitopy.runtime.cache.store import Store

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def iso(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def samples(collector: Any, name: str) -> dict[tuple[str, ...], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    return {
        tuple(s.labels.values()): s.value for f in registry.collect() for s in f.samples if s.name == name
    }


def workspace(name: str, created: float, *conds: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": "ns", "creationTimestamp": iso(created)},
        "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
        "status": {"conditions": list(conds)},
    }


def test_not_ready_seconds_names_each_workspace_waiting_or_failed_since_it_stopped_being_ready() -> None:
    store = Store()
    store.upsert(workspace("pending", NOW - 100))
    store.upsert(
        workspace(
            "degraded",
            NOW - 5000,
            {
                "type": "WorkspaceSucceeded",
                "status": "False",
                "reason": "InferenceNotReady",
                "lastTransitionTime": iso(NOW - 300),
            },
        )
    )
    store.upsert(
        workspace(
            "serving",
            NOW - 9000,
            {"type": "WorkspaceSucceeded", "status": "True", "lastTransitionTime": iso(NOW - 8000)},
        )
    )
    got = samples(WorkspaceCollector(store, clock=lambda: NOW), "kaitopy_workspace_not_ready_seconds")
    assert got == {("ns", "pending", "pending"): 100.0, ("ns", "degraded", "provisioning"): 300.0}


def claim(name: str, created: float, *, ready: bool = False, deleting: bool = False) -> dict[str, Any]:
    md: dict[str, Any] = {
        "name": name,
        "creationTimestamp": iso(created),
        "labels": {"node.kubernetes.io/instance-type": "Standard_NC24ads_A100_v4"},
    }
    if deleting:
        md["deletionTimestamp"] = iso(NOW)
    conds = [{"type": "Ready", "status": "True" if ready else "Unknown"}]
    return {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodeClaim",
        "metadata": md,
        "status": {"conditions": conds},
    }


def test_nodeclaim_not_ready_seconds_covers_only_claims_still_launching() -> None:
    store = Store()
    store.upsert(claim("waiting", NOW - 1300))
    store.upsert(claim("up", NOW - 4000, ready=True))
    store.upsert(claim("going", NOW - 4000, deleting=True))
    got = samples(NodeClaimAgeCollector(store, clock=lambda: NOW), "kaitopy_nodeclaim_not_ready_seconds")
    assert got == {("waiting", "Standard_NC24ads_A100_v4"): 1300.0}


class Provider:
    """The CloudProvider calls garbage collection makes, over a fixed list of instances."""

    name = "test"

    def __init__(self, instances: list[Instance]) -> None:
        self.instances = instances
        self.deleted: list[str] = []

    async def list(self) -> list[Instance]:
        return [i for i in self.instances if i.name not in self.deleted]

    async def begin_delete(self, name: str) -> None:
        self.deleted.append(name)


class Claims:
    def __init__(self, *names: str) -> None:
        self.store = Store()
        for n in names:
            self.store.upsert(claim(n, NOW))

    async def wait_synced(self) -> None:
        return None


async def test_leaked_instances_gauge_counts_what_the_last_pass_found() -> None:
    old = NOW - 3600
    provider = Provider(
        [
            Instance("owned", "t", "running", claim_name="owned", created_at=old),
            Instance("leak", "t", "running", claim_name="gone", created_at=old),
            Instance("young", "t", "running", claim_name="gone2", created_at=NOW - 1),
        ]
    )
    registry = CollectorRegistry()
    leaks = LeakMetrics(registry)
    gc = GarbageCollector(
        provider,  # type: ignore[arg-type]
        Claims("owned"),  # type: ignore[arg-type]
        ProvisionerSettings(),
        clock=lambda: NOW,
        metrics=leaks,
    )
    assert await gc.collect_once() == ["leak"]
    assert registry.get_sample_value("kaitopy_provisioner_leaked_instances", {"provider": "test"}) == 1.0
    assert await gc.collect_once() == []  # the leak is gone; the young one is within its grace
    assert registry.get_sample_value("kaitopy_provisioner_leaked_instances", {"provider": "test"}) == 0.0
