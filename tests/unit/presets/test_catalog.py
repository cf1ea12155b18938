"""The packaged model and GPU catalogs."""

from __future__ import annotations

import pytest

from kaitopy.presets import Catalog, UnknownInstanceType, UnknownPreset

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
]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


@pytest.mark.parametrize("name", REQUIRED_MODELS)
def test_every_required_model_is_there(catalog: Catalog, name: str) -> None:
    m = catalog.model(name)
    assert m.name == name
    assert "/" in m.hf_id
    # Weights of a 16-bit checkpoint are about 2 bytes a parameter; gpt-oss ships MXFP4 (smaller).
    ratio = m.weights_bytes / (m.params_b * 1e9)
    assert (0.5 if m.name.startswith("gpt-oss") else 1.9) < ratio < 2.1


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


def test_kaito_presets_not_served_are_refused_as_such() -> None:
    with pytest.raises(
        UnknownPreset, match=r"'deepseek-v3-0324' is a Kaito preset kaitopy does not serve yet"
    ):
        Catalog.load().model("deepseek-v3-0324")


def test_unknown_instance_type_suggests_close_ones() -> None:
    with pytest.raises(UnknownInstanceType, match=r"did you mean Standard_NC24ads_A100_v4"):
        Catalog.load().sku("Standard_NC24ads_A100")
    with pytest.raises(UnknownInstanceType, match=r"'<your-vm-sku>' is a placeholder"):
        Catalog.load().sku("<your-vm-sku>")
