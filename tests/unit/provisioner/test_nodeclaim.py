"""The provisioner's pure decisions: launch requests, registration, initialization, Ready roll-up,
and the command line's configuration errors."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from kaitopy.provisioner.claimdecision import elapsed, launch_age
from kaitopy.provisioner.cloudprovider import Taint
from kaitopy.provisioner.nodeclaim import (
    ClaimSpecError,
    gib,
    initial_conditions,
    initialization,
    is_ours,
    launch_request_for,
    registration_update,
    with_ready,
)
from kaitopy.runtime import find_condition, set_condition

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def claim(**overrides: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "metadata": {"name": "ws1a2b3c", "uid": "u-1", "labels": {"kaito.sh/workspace": "phi"}},
        "spec": {
            "nodeClassRef": {"group": "kaito.sh", "kind": "KaitoNodeClass", "name": "default"},
            "requirements": [
                {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["Standard_NC6s_v3"]},
                {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["eastus-1", "eastus-2"]},
            ],
            "resources": {"requests": {"storage": "120Gi", "nvidia.com/gpu": "1"}},
            "taints": [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}],
        },
    }
    c["spec"].update(overrides)
    return c


def node(ready: bool = True, gpus: str = "1", taints: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "n1", "labels": {"existing": "x"}},
        "spec": {
            "taints": taints
            if taints is not None
            else [
                {"key": "karpenter.sh/unregistered", "effect": "NoExecute"},
                {"key": "sku", "value": "gpu", "effect": "NoSchedule"},
            ]
        },
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "allocatable": {"cpu": "6", "nvidia.com/gpu": gpus},
        },
    }


def test_launch_request_takes_the_pinned_instance_type_labels_and_storage() -> None:
    req = launch_request_for(claim(), default_os_sku="Ubuntu")
    assert req.instance_type == "Standard_NC6s_v3"
    assert req.labels == {"kaito.sh/workspace": "phi", "kubernetes.io/os": "linux"}  # zones: 2 values
    assert req.taints == [Taint("sku", "NoSchedule", "gpu")]
    assert Taint("karpenter.sh/unregistered", "NoExecute") in req.startup_taints
    assert (req.storage_gib, req.os_sku) == (120, "Ubuntu")


def test_launch_request_without_a_single_instance_type_is_a_spec_error() -> None:
    c = claim(
        requirements=[{"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["a", "b"]}]
    )
    with pytest.raises(ClaimSpecError, match=r"node\.kubernetes\.io/instance-type"):
        launch_request_for(c)


@pytest.mark.parametrize(
    ("q", "want"), [("120Gi", 120), ("1Ti", 1024), ("100G", 94), ("1", 1), ("1500Mi", 2)]
)
def test_gib_rounds_up(q: str, want: int) -> None:
    assert gib(q) == want


def test_only_claims_of_our_node_class_are_ours() -> None:
    assert is_ours(claim())
    assert not is_ours(
        claim(nodeClassRef={"group": "karpenter.azure.com", "kind": "AKSNodeClass", "name": "x"})
    )


def test_registration_syncs_labels_taints_and_owner_and_drops_the_unregistered_taint() -> None:
    update = registration_update(claim(), node())
    assert update.labels["kaito.sh/workspace"] == "phi"
    assert update.labels["kaito.sh/nodeclaim"] == "ws1a2b3c"
    assert update.labels["karpenter.sh/registered"] == "true"
    assert [t["key"] for t in update.taints] == ["sku"]
    assert update.owner_reference["uid"] == "u-1"
    assert update.changes(node())
    synced = node(taints=update.taints)
    synced["metadata"]["labels"] = update.labels
    synced["metadata"]["ownerReferences"] = [update.owner_reference]
    assert not update.changes(synced)  # a second pass writes nothing


def test_initialization_waits_for_ready_and_requested_resources() -> None:
    assert initialization(claim(), node(ready=False))[1] == "NodeNotReady"
    ok, reason, message = initialization(claim(), node(gpus="0"))
    assert (ok, reason) == (False, "ResourceNotRegistered") and "nvidia.com/gpu" in message
    assert initialization(claim(), node())[0]


def test_ready_rolls_up_the_first_unready_condition() -> None:
    conds = initial_conditions(NOW, 1)
    ready = find_condition(conds, "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("Unknown", "AwaitingReconciliation")
    conds = set_condition(conds, "Launched", "False", reason="QuotaExceeded", message="no quota", now=NOW)
    ready = find_condition(with_ready(conds, NOW, 1), "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "QuotaExceeded")
    assert "no quota" in ready["message"]
    for t in ("Launched", "Registered", "Initialized"):
        conds = set_condition(conds, t, "True", reason=t, now=NOW)
    ready = find_condition(with_ready(conds, NOW, 1), "Ready")
    assert ready is not None and ready["status"] == "True"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kaitopy", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_azure_provider_without_settings_names_every_missing_variable() -> None:
    proc = run_cli("provisioner", "--cloud-provider", "azure", env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    for var in ("ARM_SUBSCRIPTION_ID", "ARM_RESOURCE_GROUP", "AZURE_CLUSTER_NAME", "AZURE_TENANT_ID"):
        assert var in proc.stderr


def test_bad_failure_injection_is_refused_with_the_expected_form() -> None:
    proc = run_cli("provisioner", "--kwok-fail", "Standard_NC6s_v3")
    assert proc.returncode == 2
    assert "INSTANCE_TYPE=REASON" in proc.stderr and "QuotaExceeded" in proc.stderr


def test_launch_age_is_timed_on_the_controllers_clock_only() -> None:
    seen = [{"type": "Launched", "status": "Unknown", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    first_seen = 1767225600.0  # 2026-01-01T00:00:00Z, written by this controller's clock
    assert launch_age(seen, first_seen + 90) == 90
    assert launch_age(seen, first_seen - 30) == 0  # written by a replica whose clock ran ahead
    assert launch_age([], first_seen) == 0  # not recorded yet: the launch starts now
    assert elapsed(None, 5.0) == 0
