"""The planner agrees with admission: what the webhook admits, the controller can place."""

from __future__ import annotations

from typing import Any

import pytest

from kaitopy.api import Workspace
from kaitopy.controllers.workspace.plan import PlanError, Settings
from kaitopy.controllers.workspace.planner import make_planner
from kaitopy.presets import Catalog
from kaitopy.webhooks import validate_create

pytestmark = pytest.mark.unit


def tuning(preset: str, instance_type: str, method: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "t", "namespace": "default"},
        "resource": {"instanceType": instance_type, "labelSelector": {"matchLabels": {"a": "t"}}},
        "tuning": {
            "preset": {"name": preset},
            "method": method,
            "input": {"urls": ["https://example.com/data.parquet"]},
            "output": {"image": "registry.example.com/a:1", "imagePushSecret": "push"},
        },
    }


def test_admitted_qlora_job_is_planned_even_when_inference_would_not_fit() -> None:
    # Found by the property tests: the planner used to size tuning with the inference estimate
    # (weights + KV cache for the 128k context), refusing a QLoRA job the webhook had admitted.
    catalog = Catalog.load()
    raw = tuning("phi-3-medium-128k-instruct", "Standard_NC12s_v3", "qlora")
    assert validate_create(Workspace.model_validate(raw), catalog) == []
    plan = make_planner(catalog, Settings())(Workspace.model_validate(raw).to_dict())
    assert plan.tuning is not None
    assert (plan.node_count, plan.gpus_per_node, plan.tuning.gpus_per_node) == (1, 2, 2)
    assert plan.tuning.method == "qlora"
    assert plan.storage_gib >= 26  # room for the weights


def test_tuning_that_does_not_fit_is_refused_with_the_admission_reason() -> None:
    catalog = Catalog.load()
    raw = tuning("phi-3-medium-128k-instruct", "Standard_NC12s_v3", "lora")
    refusal = validate_create(Workspace.model_validate(raw), catalog)
    assert [e.field for e in refusal] == ["resource.instanceType"]
    with pytest.raises(PlanError) as err:
        make_planner(catalog, Settings())(Workspace.model_validate(raw).to_dict())
    assert err.value.reason == "InsufficientGPUMemory"
    assert "or use qlora" in str(err.value)
