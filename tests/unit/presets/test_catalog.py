"""The packaged model and GPU catalogs."""

from __future__ import annotations

import pytest

from kaitopy.presets import Catalog, ModelPreset, UnknownInstanceType, UnknownPreset

REQUIRED_MODELS = [
    "phi-3-mini-4k-instruct",
    "phi-3-mini-128k-instruct",
    "phi-3-medium-4k-instruct",
    "phi-3-medium-128k-instruct",
    "phi-3.5-mini-instruct",
    "phi-4",
    "phi-4-mini-instruct",
    "llama-3.1-8b-instruct",
    "llama-3.3-70b-instruct",
    "mistral-7b",
    "mistral-7b-instruct",
    "qwen2.5-coder-7b-instruct",
    "qwen2.5-coder-32b-instruct",
    "deepseek-r1-distill-llama-8b",
    "deepseek-r1-distill-qwen-14b",
    "falcon-7b",
    "falcon-40b",
    "gemma-3-4b-instruct",
    "gemma-3-27b-instruct",
    "gpt-oss-20b",
    "gpt-oss-120b",
    # Kaito v0.12's curated presets added for issue 19.8.
    "deepseek-r1-0528",
    "deepseek-v3-0324",
    "ministral-3-3b-instruct",
    "ministral-3-8b-instruct",
    "ministral-3-14b-instruct",
    "mistral-large-3-675b-instruct",
]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


@pytest.mark.parametrize("name", REQUIRED_MODELS)
def test_every_required_model_is_there(catalog: Catalog, name: str) -> None:
    m = catalog.model(name)
    assert m.name == name
    assert "/" in m.hf_id
    # Weights of a 16-bit checkpoint are about 2 bytes a parameter; fp8 about 1 (a 16-bit vision
    # encoder adds some for Ministral 3); gpt-oss ships MXFP4 (smaller).
    ratio = m.weights_bytes / (m.params_b * 1e9)
    low, high = {None: (1.9, 2.1), "fp8": (1.0, 1.3), "mxfp4": (0.5, 1.0)}[m.quantization]
    assert low < ratio < high


def test_load_is_cached_and_read_only(catalog: Catalog) -> None:
    assert Catalog.load() is catalog
    with pytest.raises(TypeError):
        catalog.models["x"] = catalog.model("phi-4")  # type: ignore[index]


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("phi-3-mini-4k-instruct", "phi-3-mini-4k-instruct"),
        ("phi-3-mini-4k", "phi-3-mini-4k-instruct"),
        ("microsoft/Phi-3-mini-4k-instruct", "phi-3-mini-4k-instruct"),
        ("PHI-4", "phi-4"),
        ("google/gemma-3-27b-it", "gemma-3-27b-instruct"),
        ("falcon-7b-instruct", "falcon-7b-instruct"),
    ],
)
def test_aliases_resolve(catalog: Catalog, alias: str, name: str) -> None:
    assert catalog.model(alias).name == name


def test_unknown_preset_suggests_close_names(catalog: Catalog) -> None:
    with pytest.raises(UnknownPreset, match=r"did you mean .*phi-3-mini-4k-instruct"):
        catalog.model("phi-3-mini-4k-instuct")


def test_unknown_preset_without_close_names_lists_all(catalog: Catalog) -> None:
    with pytest.raises(UnknownPreset, match=r"Supported presets: .*gpt-oss-120b"):
        catalog.model("zzzzzz")


def test_unknown_sku_lists_supported(catalog: Catalog) -> None:
    with pytest.raises(UnknownInstanceType, match=r"Standard_NC6s_v3.*p5.48xlarge"):
        catalog.sku("Standard_NC6")


def test_facts_of_well_known_models(catalog: Catalog) -> None:
    phi = catalog.model("phi-3-mini-4k-instruct")
    assert (phi.max_context, phi.kv_bytes_per_token, phi.dtype) == (4096, 393216, "bfloat16")
    assert phi.supports_tuning and phi.supports_lora and not phi.supports_multi_node
    assert phi.tool_call_parser is None and phi.reasoning_parser is None
    llama = catalog.model("llama-3.3-70b-instruct")
    assert llama.max_context == 131072 and llama.supports_multi_node
    assert llama.tool_call_parser == "llama3_json"
    assert catalog.model("deepseek-r1-distill-qwen-14b").reasoning_parser == "deepseek_r1"
    assert catalog.model("gpt-oss-20b").min_compute_capability == 8.0


def test_kv_size_must_match_architecture() -> None:
    bad = {
        "name": "x",
        "hf_id": "a/x",
        "params_b": 1,
        "weights_bytes": 2_000_000_000,
        "max_context": 1024,
        "layers": 2,
        "attention_heads": 2,
        "kv_heads": 2,
        "head_dim": 64,
        "kv_bytes_per_token": 1,
        "dtype": "bfloat16",
        "supports_lora": True,
        "supports_tuning": True,
        "supports_multi_node": False,
        "tool_call_parser": None,
        "reasoning_parser": None,
    }
    with pytest.raises(ValueError, match="does not match"):
        Catalog.from_data({"models": [bad]}, {"skus": []})


def test_skus(catalog: Catalog) -> None:
    v100 = catalog.sku("Standard_NC6s_v3")
    assert (v100.gpu_count, v100.gpu_model, v100.gpu_memory_gib, v100.compute_capability) == (
        1,
        "V100",
        16,
        7.0,
    )
    assert not v100.supports_bfloat16
    a100 = catalog.sku("standard_nc24ads_a100_v4")
    assert (a100.gpu_count, a100.gpu_memory_gib, a100.compute_capability, a100.nvme) == (1, 80, 8.0, True)
    p5 = catalog.sku("p5.48xlarge")
    assert (p5.cloud, p5.gpu_count, p5.gpu_memory_per_gpu_gib) == ("aws", 8, 80)
    for family in ("A10", "A100", "H100", "H200", "V100", "T4"):
        assert any(s.cloud == "azure" and s.gpu_model == family for s in catalog.skus.values()), family
    for prefix in ("p4d.", "p5.", "g5.", "g6."):
        assert any(s.instance_type.startswith(prefix) for s in catalog.skus.values()), prefix


def test_kaito_v012_presets_resolve_by_kaito_name_and_hub_id() -> None:
    catalog = Catalog.load()
    # Kaito's LegacyBuiltinToCatalog maps each short name to this hub id (any case).
    for name, hf_id in [
        ("deepseek-r1-0528", "deepseek-ai/deepseek-r1-0528"),
        ("deepseek-v3-0324", "deepseek-ai/deepseek-v3-0324"),
        ("ministral-3-3b-instruct", "mistralai/ministral-3-3b-instruct-2512"),
        ("ministral-3-8b-instruct", "mistralai/ministral-3-8b-instruct-2512"),
        ("ministral-3-14b-instruct", "mistralai/ministral-3-14b-instruct-2512"),
        ("mistral-large-3-675b-instruct", "mistralai/mistral-large-3-675b-instruct-2512"),
    ]:
        assert catalog.model(hf_id).name == name


def test_latent_attention_cache_is_the_latent_vector_per_layer() -> None:
    # DeepSeek-V3's cache holds kv_lora_rank + qk_rope_head_dim values per layer (61 layers), not
    # K and V for each of its 128 heads: 70,272 bytes a token, not 5,996,544.
    model = Catalog.load().model("deepseek-r1-0528")
    assert (model.kv_lora_rank, model.qk_rope_head_dim, model.layers) == (512, 64, 61)
    assert model.kv_bytes_per_token == 61 * (512 + 64) * 2
    with pytest.raises(ValueError, match=r"layers \* \(kv_lora_rank \+ qk_rope_head_dim\) \* 2 = 70272"):
        ModelPreset.model_validate({**model.model_dump(), "kv_bytes_per_token": 2 * 61 * 128 * 192 * 2})
    with pytest.raises(ValueError, match="kv_lora_rank and qk_rope_head_dim go together"):
        ModelPreset.model_validate({**model.model_dump(), "qk_rope_head_dim": None})


def test_hugging_face_ids_outside_the_catalog_are_refused_as_not_supported_yet() -> None:
    with pytest.raises(
        UnknownPreset,
        match=r"'Qwen/Qwen3-8B' is a Hugging Face model id outside kaitopy's catalog: serving any Hugging "
        r"Face model with a vLLM-supported architecture .* is not supported by kaitopy yet",
    ):
        Catalog.load().model("Qwen/Qwen3-8B")
    # A near miss of a catalog id gets the id it probably meant.
    with pytest.raises(UnknownPreset, match=r"did you mean microsoft/Phi-4-mini-instruct"):
        Catalog.load().model("microsoft/Phi-4-mini-instruc")


def test_unknown_instance_type_suggests_close_ones() -> None:
    with pytest.raises(UnknownInstanceType, match=r"did you mean Standard_NC24ads_A100_v4"):
        Catalog.load().sku("Standard_NC24ads_A100")
    with pytest.raises(UnknownInstanceType, match=r"'<your-vm-sku>' is a placeholder"):
        Catalog.load().sku("<your-vm-sku>")
