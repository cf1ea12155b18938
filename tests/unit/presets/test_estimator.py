"""The estimator: nodes, parallelism, runtime and refusals."""

from __future__ import annotations

import pytest

from kaitopy.presets import Catalog, DoesNotFit, EstimateError, estimate, fitting_skus, longest_context


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def test_classic_phi3_example_runs_on_v100_with_transformers(catalog: Catalog) -> None:
    plan = estimate(catalog.model("phi-3-mini-4k-instruct"), catalog.sku("Standard_NC6s_v3"))
    assert (plan.node_count, plan.gpus_per_node) == (1, 1)
    assert plan.runtime == "transformers"
    assert plan.dtype == "float16"  # V100 has no bfloat16
    assert plan.max_model_len == 4096
    assert plan.storage_gib >= 10


def test_phi3_on_a100_uses_vllm_in_bfloat16(catalog: Catalog) -> None:
    plan = estimate(catalog.model("phi-3-mini-4k-instruct"), catalog.sku("Standard_NC24ads_A100_v4"))
    assert (plan.runtime, plan.dtype, plan.node_count, plan.tensor_parallel_size) == (
        "vllm",
        "bfloat16",
        1,
        1,
    )


def test_llama_70b_on_single_a100_nodes_pipelines_across_nodes(catalog: Catalog) -> None:
    model, sku = catalog.model("llama-3.3-70b-instruct"), catalog.sku("Standard_NC24ads_A100_v4")
    # 141.1 GB of weights (131.4 GiB) + 40 GiB of KV cache for 128k tokens = 171.4 GiB; each 80 GiB
    # A100 gives 80 * 0.9 - 1 = 71 GiB, so three nodes, one pipeline stage each, when asked for it.
    plan = estimate(model, sku, max_model_len=131072)
    assert plan.required_gib == pytest.approx(171.4, abs=0.1)
    assert (plan.node_count, plan.gpus_per_node) == (3, 1)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (1, 3)
    assert plan.runtime == "vllm" and plan.context_fixed
    # With an 8k context the weights dominate: two nodes.
    short = estimate(model, sku, max_model_len=8192)
    assert (short.node_count, short.pipeline_parallel_size) == (2, 2)
    # Unset, it is sized on the weights (as Kaito sizes it): two nodes, context fitted at start.
    default = estimate(model, sku)
    assert (default.node_count, default.context_fixed) == (2, False)


def test_llama_70b_on_eight_gpu_node_uses_tensor_parallel(catalog: Catalog) -> None:
    plan = estimate(catalog.model("llama-3.3-70b-instruct"), catalog.sku("Standard_ND96asr_v4"))
    assert (plan.node_count, plan.tensor_parallel_size, plan.pipeline_parallel_size) == (1, 8, 1)
    # 4 x 40 GiB A100s (4 * 35 = 140 usable GiB) are not enough for 171 GiB; 8 are.
    plan2 = estimate(catalog.model("llama-3.3-70b-instruct"), catalog.sku("p4d.24xlarge"), max_model_len=8192)
    assert plan2.tensor_parallel_size == 4 and plan2.gpus_per_node == 4


def test_tensor_parallel_divides_attention_heads(catalog: Catalog) -> None:
    # qwen2.5-coder-32b has 40 heads: 8-way TP is fine (40 % 8 == 0); check the chosen size divides.
    plan = estimate(catalog.model("qwen2.5-coder-32b-instruct"), catalog.sku("g5.48xlarge"))
    assert 40 % plan.tensor_parallel_size == 0
    assert plan.tensor_parallel_size * 24 * 0.9 - plan.tensor_parallel_size >= plan.required_gib


def test_too_small_gpu_is_refused_with_the_memory_needed_and_what_fits(catalog: Catalog) -> None:
    with pytest.raises(DoesNotFit) as info:
        estimate(catalog.model("phi-3-medium-4k-instruct"), catalog.sku("Standard_NC6s_v3"))
    message = str(info.value)
    assert "phi-3-medium-4k-instruct needs 26.4 GiB" in message
    assert "Standard_NC6s_v3 (1x V100, 16 GiB)" in message
    assert "instance types that fit: " in message
    assert "Standard_NC24ads_A100_v4" in info.value.fitting_skus
    assert info.value.required_gib == pytest.approx(26.4, abs=0.1)


def test_long_context_refusal_suggests_a_shorter_max_model_len(catalog: Catalog) -> None:
    model, sku = catalog.model("phi-3-mini-128k-instruct"), catalog.sku("Standard_NC6s_v3")
    with pytest.raises(DoesNotFit, match=r"set max_model_len to 16384 or less"):
        estimate(model, sku, max_model_len=131072)
    assert longest_context(model, sku) == 16384
    assert estimate(model, sku, max_model_len=16384).node_count == 1


def test_single_node_models_never_span_nodes(catalog: Catalog) -> None:
    with pytest.raises(DoesNotFit, match="cannot span nodes"):
        estimate(catalog.model("phi-3-medium-128k-instruct"), catalog.sku("Standard_NV36ads_A10_v5"))


def test_compute_capability_floor(catalog: Catalog) -> None:
    with pytest.raises(DoesNotFit, match=r"compute capability 7.0 and gpt-oss-20b needs 8.0"):
        estimate(catalog.model("gpt-oss-20b"), catalog.sku("Standard_NC6s_v3"))


def test_max_model_len_beyond_the_model_is_refused(catalog: Catalog) -> None:
    with pytest.raises(EstimateError, match=r"outside 1\.\.4096"):
        estimate(catalog.model("phi-3-mini-4k-instruct"), catalog.sku("Standard_NC6s_v3"), max_model_len=8192)


def test_fitting_skus_fewest_nodes_then_least_memory(catalog: Catalog) -> None:
    fits = fitting_skus(catalog.model("phi-3-mini-4k-instruct"), catalog.skus.values())
    assert catalog.sku(fits[0]).gpu_memory_gib == 16
    assert "Standard_NC6s_v3" in fits
    mems = [catalog.sku(f).gpu_memory_gib for f in fits]
    assert mems == sorted(mems)


@pytest.mark.parametrize("name", ["phi-3-mini-4k-instruct", "llama-3.1-8b-instruct", "gpt-oss-120b"])
def test_every_plan_holds_the_model(catalog: Catalog, name: str) -> None:
    model = catalog.model(name)
    for instance_type in fitting_skus(model, catalog.skus.values()):
        plan = estimate(model, catalog.sku(instance_type))
        assert plan.total_gpus * plan.usable_gib_per_gpu >= plan.required_gib
        assert plan.tensor_parallel_size * plan.pipeline_parallel_size <= plan.total_gpus


@pytest.mark.parametrize(
    ("preset", "instance_type"),
    [
        ("phi-3-mini-128k-instruct", "Standard_NC6s_v3"),  # 16 GiB V100, 128k context
        ("gemma-3-4b-instruct", "Standard_NV36ads_A10_v5"),  # Kaito's own gemma-3-4b example
    ],
)
def test_unset_context_is_admitted_on_the_weights_as_kaito_admits_it(
    catalog: Catalog, preset: str, instance_type: str
) -> None:
    model = catalog.model(preset)
    plan = estimate(model, catalog.sku(instance_type))
    assert plan.node_count == 1
    assert not plan.context_fixed  # no --max-model-len: the engine fits the context at start
    assert plan.max_model_len < model.max_context
    assert plan.total_gpus * plan.usable_gib_per_gpu >= plan.required_gib > model.weights_gib


def test_what_can_never_load_is_still_refused(catalog: Catalog) -> None:
    # 26.8 GiB of phi-3-medium weights never fit a 16 GiB V100, whatever the context.
    with pytest.raises(DoesNotFit, match=r"phi-3-medium-128k-instruct needs 2\d\.\d GiB"):
        estimate(catalog.model("phi-3-medium-128k-instruct"), catalog.sku("Standard_NC6s_v3"))


def test_full_context_is_kept_when_it_fits_as_few_nodes(catalog: Catalog) -> None:
    plan = estimate(catalog.model("phi-3-mini-128k-instruct"), catalog.sku("Standard_NC24ads_A100_v4"))
    assert (plan.max_model_len, plan.context_fixed, plan.node_count) == (131072, False, 1)


def test_kaito_v012_large_presets_span_the_examples_h100_nodes(catalog: Catalog) -> None:
    # Kaito's examples put DeepSeek-R1/V3 and Mistral-Large-3 (about 640 GiB of fp8 weights) on
    # Standard_NC80adis_H100_v5 (2x H100 94 GB): four nodes, tensor parallel over each node's two
    # GPUs and one pipeline stage per node. The latent-attention cache (70 KiB a token) lets the
    # full context fit in those same four nodes.
    for name in ("deepseek-r1-0528", "deepseek-v3-0324", "mistral-large-3-675b-instruct"):
        model = catalog.model(name)
        plan = estimate(model, catalog.sku("Standard_NC80adis_H100_v5"))
        assert (plan.node_count, plan.tensor_parallel_size, plan.pipeline_parallel_size) == (4, 2, 4), name
        assert (plan.runtime, plan.max_model_len) == ("vllm", model.max_context), name
        # fp8 weights need vLLM's kernels: never the transformers runtime of a V100 node.
        with pytest.raises(DoesNotFit, match=r"compute capability 7\.0"):
            estimate(model, catalog.sku("Standard_ND40rs_v2"))


def test_ministral_3_fits_the_examples_single_gpu_nodes(catalog: Catalog) -> None:
    for name, sku in [
        ("ministral-3-3b-instruct", "Standard_NV36ads_A10_v5"),
        ("ministral-3-8b-instruct", "Standard_NC24ads_A100_v4"),
        ("ministral-3-14b-instruct", "Standard_NC24ads_A100_v4"),
    ]:
        plan = estimate(catalog.model(name), catalog.sku(sku))
        assert (plan.node_count, plan.gpus_per_node, plan.runtime) == (1, 1, "vllm"), name
