"""The CPU preset's catalog entry: its numbers agree with the converted model, and the loader
refuses runtime fields that contradict each other."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kaitopy.presets import Catalog, ModelPreset, estimate, fitting_skus, longest_context

pytestmark = pytest.mark.unit


def entry(**changes: Any) -> dict[str, Any]:
    return {**Catalog.load().model("smollm2-135m-instruct").model_dump(), **changes}


def test_the_entry_matches_smollm2_135m_config() -> None:
    m = Catalog.load().model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert m.name == "smollm2-135m-instruct"
    # config.json of the converted model: 30 layers, 9 heads, 3 KV heads, head_dim 64, 8k context.
    assert (m.layers, m.attention_heads, m.kv_heads, m.head_dim, m.max_context) == (30, 9, 3, 64, 8192)
    assert m.weights_bytes == 538090408  # float32 model.safetensors: 134,515,008 parameters x 4
    assert (m.engine, m.weights_source, m.weights_version, m.dtype) == (
        "transformers-cpu",
        "oci",
        "0.1.2",
        "float32",
    )
    assert m.on_cpu and m.cpu_resources is not None


def test_it_fits_every_sku_on_cpu_with_its_full_context() -> None:
    catalog = Catalog.load()
    m = catalog.model("smollm2-135m-instruct")
    assert len(fitting_skus(m, catalog.skus.values())) == len(catalog.skus)
    for sku in catalog.skus.values():
        plan = estimate(m, sku)
        assert (plan.runtime, plan.node_count, plan.required_gib, plan.max_model_len) == (
            "transformers",
            1,
            0.0,
            8192,
        )
        assert longest_context(m, sku) == 8192


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cpu_resources": None}, "needs cpu_resources"),
        ({"engine": "auto"}, "apply to the CPU engines only"),
        ({"weights_version": None}, "needs weights_version"),
        # More than one node: vLLM's CPU build only (transformers cannot span nodes), and a model
        # that may be split, with a layer for every stage.
        ({"cpu_nodes": 2}, "cpu_nodes above 1 needs engine vllm-cpu"),
        (
            {"cpu_nodes": 2, "engine": "vllm-cpu"},
            "cpu_nodes above 1 needs engine vllm-cpu and supports_multi_node",
        ),
        (
            {
                "cpu_nodes": 16,
                "engine": "vllm-cpu",
                "supports_multi_node": True,
                "layers": 8,
                "kv_bytes_per_token": 6144,
            },
            "only 8 layers",
        ),
    ],
)
def test_contradictory_runtime_fields_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelPreset.model_validate(entry(**changes))


def test_gpu_presets_keep_their_defaults() -> None:
    for m in Catalog.load().models.values():
        if not m.name.startswith("smollm2-135m-instruct"):
            assert (m.engine, m.weights_source, m.cpu_resources) == ("auto", "huggingface", None)


MULTINODE = "smollm2-135m-instruct-multinode"


def test_the_multi_node_variant_plans_two_vllm_stages_on_every_sku() -> None:
    catalog = Catalog.load()
    m = catalog.model(MULTINODE)
    assert (m.engine, m.cpu_nodes, m.variant_of, m.weights_name) == (
        "vllm-cpu",
        2,
        "smollm2-135m-instruct",
        "smollm2-135m-instruct",
    )
    for sku in catalog.skus.values():
        plan = estimate(m, sku)
        assert (plan.runtime, plan.node_count, plan.pipeline_parallel_size, plan.required_gib) == (
            "vllm",
            2,
            2,
            0.0,
        )


def variant(**changes: Any) -> dict[str, Any]:
    return {**Catalog.load().model(MULTINODE).model_dump(), **changes}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"variant_of": "no-such-preset"}, "is not a preset of its own"),
        ({"variant_of": "phi-3-mini-4k-instruct"}, "same hf_id and weights"),
        ({"weights_version": "0.2.0"}, "same hf_id and weights"),
    ],
)
def test_a_variant_must_serve_its_base_checkpoint(changes: dict[str, Any], message: str) -> None:
    catalog = Catalog.load()
    models = [m for m in catalog.models.values() if m.name != MULTINODE]
    with pytest.raises(ValueError, match=message):
        Catalog([*models, ModelPreset.model_validate(variant(**changes))], list(catalog.skus.values()))
