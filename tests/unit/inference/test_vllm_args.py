"""The vLLM launch plan: argv, context sizing from measured memory, config checking, adapters, multi-node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kaitopy.inference.vllm_args import (
    CPU_KV_FLOOR,
    CPU_KV_FRACTION,
    CPU_KV_SLACK,
    CPU_MAX_NUM_SEQS,
    CPU_PIPELINE_COMPILATION,
    CPU_RESERVE,
    FALLBACK_VLLM_OPTIONS,
    GIB,
    Adapter,
    Memory,
    ModelShape,
    PlanError,
    VllmOptions,
    discover_adapters,
    lora_rank_slot,
    model_shape,
    plan_vllm,
    read_model_shape,
    serving_dtype,
)
from kaitopy.inference.vllm_memory import with_limit

# Llama-3-8B's shape: 32 layers, 8 KV heads of 128 in bfloat16 = 128 KiB per token; 16 GB of weights.
LLAMA8B = {
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_size": 4096,
    "max_position_embeddings": 8192,
    "torch_dtype": "bfloat16",
}
H100 = 80 * GIB


def shape8b() -> ModelShape:
    return model_shape(LLAMA8B, "auto", 16 * GIB)


def options(**kw: object) -> VllmOptions:
    base: dict[str, object] = {"model_dir": Path("/m"), "served_model_name": "llama", "port": 8123}
    base.update(kw)
    return VllmOptions(**base)  # type: ignore[arg-type]


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_kv_bytes_per_token_from_config() -> None:
    assert shape8b().kv_bytes_per_token == 2 * 32 * 8 * 128 * 2
    assert model_shape(LLAMA8B, "float32", 0).kv_bytes_per_token == 2 * 32 * 8 * 128 * 4
    # head_dim given explicitly wins over hidden/heads; a multimodal wrapper's text_config is used.
    wrapped = {"text_config": {**LLAMA8B, "head_dim": 64}}
    assert model_shape(wrapped, "bfloat16", 0).kv_bytes_per_token == 2 * 32 * 8 * 64 * 2


def test_latent_attention_caches_one_vector_per_layer() -> None:
    # DeepSeek-V3's config.json (the fields sizing reads): 128 heads, but MLA caches
    # kv_lora_rank + qk_rope_head_dim values a layer, 70 KiB a token rather than 1.7 MiB.
    deepseek = {
        "num_hidden_layers": 61,
        "num_attention_heads": 128,
        "num_key_value_heads": 128,
        "hidden_size": 7168,
        "kv_lora_rank": 512,
        "qk_rope_head_dim": 64,
        "torch_dtype": "bfloat16",
    }
    assert model_shape(deepseek, "auto", 0).kv_bytes_per_token == 61 * (512 + 64) * 2


def test_config_without_layers_is_a_clear_error() -> None:
    with pytest.raises(PlanError, match="num_hidden_layers"):
        model_shape({"hidden_size": 8}, "auto", 0)


def test_base_argv_carries_every_serve_option() -> None:
    plan = plan_vllm(
        options(dtype="bfloat16", tensor_parallel_size=2, pipeline_parallel_size=1),
        shape8b(),
        Memory("cuda", H100, H100),
        FALLBACK_VLLM_OPTIONS,
    )
    argv = plan.argv
    assert flag(argv, "--served-model-name") == "llama"
    assert flag(argv, "--dtype") == "bfloat16"
    assert flag(argv, "--tensor-parallel-size") == "2"
    assert flag(argv, "--pipeline-parallel-size") == "1"
    assert flag(argv, "--host") == "127.0.0.1"
    assert flag(argv, "--port") == "8123"
    assert "--enable-prefix-caching" in argv
    assert "--enable-lora" not in argv
    assert "--enable-auto-tool-choice" not in argv
    assert plan.model_ids == ["llama"]


def test_gpu_context_is_the_model_limit_when_memory_allows() -> None:
    plan = plan_vllm(options(), shape8b(), Memory("cuda", H100, H100), FALLBACK_VLLM_OPTIONS)
    assert plan.max_model_len == 8192
    assert flag(plan.argv, "--max-model-len") == "8192"
    assert flag(plan.argv, "--gpu-memory-utilization") == "0.95"


def test_gpu_utilization_follows_measured_free_memory() -> None:
    # Another process holds 30 GiB: vLLM must not ask for more than the 50 GiB left.
    plan = plan_vllm(options(), shape8b(), Memory("cuda", 50 * GIB, H100), FALLBACK_VLLM_OPTIONS)
    utilization = float(flag(plan.argv, "--gpu-memory-utilization"))
    assert utilization * H100 <= 50 * GIB
    assert utilization >= 0.6


def test_gpu_context_shrinks_to_what_fits() -> None:
    # 24 GiB card at 0.95: ~22.8 GiB - 16 GiB weights - 2 GiB reserve leaves ~4.8 GiB = ~38k tokens of
    # 128 KiB for a model allowing 8k; with a model allowing 131072 tokens the memory decides.
    long = model_shape({**LLAMA8B, "max_position_embeddings": 131072}, "auto", 16 * GIB)
    plan = plan_vllm(options(), long, Memory("cuda", 24 * GIB, 24 * GIB), FALLBACK_VLLM_OPTIONS)
    budget = int(0.95 * 24 * GIB) - 16 * GIB - 2 * GIB
    assert plan.max_model_len == budget // (128 * 1024) // 16 * 16
    assert plan.max_model_len < 131072
    assert plan.max_model_len * 128 * 1024 <= budget
    assert any("limited to" in n for n in plan.notes)


def test_tensor_parallel_splits_weights_and_cache() -> None:
    long = model_shape({**LLAMA8B, "max_position_embeddings": 1_000_000}, "auto", 16 * GIB)
    one = plan_vllm(options(), long, Memory("cuda", 24 * GIB, 24 * GIB), FALLBACK_VLLM_OPTIONS)
    two = plan_vllm(
        options(tensor_parallel_size=2), long, Memory("cuda", 24 * GIB, 24 * GIB), FALLBACK_VLLM_OPTIONS
    )
    assert two.max_model_len > 2 * one.max_model_len


def test_model_that_does_not_fit_is_refused_not_defaulted() -> None:
    with pytest.raises(PlanError, match="KV cache holds only"):
        plan_vllm(options(), shape8b(), Memory("cuda", 18 * GIB, 24 * GIB), FALLBACK_VLLM_OPTIONS)


def test_given_max_model_len_is_used_and_flagged_when_too_big() -> None:
    plan = plan_vllm(
        options(max_model_len=4096), shape8b(), Memory("cuda", H100, H100), FALLBACK_VLLM_OPTIONS
    )
    assert flag(plan.argv, "--max-model-len") == "4096"
    assert plan.notes == []
    big = plan_vllm(
        options(max_model_len=200_000), shape8b(), Memory("cuda", 20 * GIB, 24 * GIB), FALLBACK_VLLM_OPTIONS
    )
    assert flag(big.argv, "--max-model-len") == "200000"
    assert any("exceeds" in n for n in big.notes)


def test_config_max_model_len_is_used_once() -> None:
    plan = plan_vllm(
        options(extra={"max-model-len": 2048}), shape8b(), Memory("cuda", H100, H100), FALLBACK_VLLM_OPTIONS
    )
    assert plan.argv.count("--max-model-len") == 1
    assert flag(plan.argv, "--max-model-len") == "2048"


SMOLLM2 = {  # SmolLM2-135M-Instruct's config.json, as far as sizing reads it
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "hidden_size": 576,
    "max_position_embeddings": 8192,
}


def test_cpu_sizes_kv_cache_bytes_from_context_and_concurrency() -> None:
    tiny = model_shape(
        {
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "hidden_size": 128,
            "max_position_embeddings": 512,
        },
        "float32",
        1_000_000,
    )
    plan = plan_vllm(options(dtype="float32"), tiny, Memory("cpu", 16 * GIB, 24 * GIB), FALLBACK_VLLM_OPTIONS)
    kv = int(flag(plan.argv, "--kv-cache-memory-bytes"))
    # 1 KiB per token; the 8 sequences a CPU runs at once at the full 512 tokens (4 MiB, plus vLLM's
    # padding) are below the floor: 128 MiB, not half the RAM.
    assert kv == CPU_KV_FLOOR
    assert flag(plan.argv, "--max-num-seqs") == str(CPU_MAX_NUM_SEQS)
    assert plan.max_model_len == 512
    assert "--gpu-memory-utilization" not in plan.argv
    two = plan_vllm(options(dtype="float32", max_concurrency=2), tiny, Memory("cpu", 16 * GIB, 24 * GIB), [])
    assert flag(two.argv, "--max-num-seqs") == "2"
    # One at a time in the front still lets vLLM stream: at 1 its CPU engine holds a lone stream.
    one = plan_vllm(options(dtype="float32", max_concurrency=1), tiny, Memory("cpu", 16 * GIB, 24 * GIB), [])
    assert flag(one.argv, "--max-num-seqs") == "2"
    longer = plan_vllm(
        options(dtype="float32", max_concurrency=2, max_model_len=65536),
        tiny,
        Memory("cpu", 16 * GIB, 24 * GIB),
        [],
    )
    assert int(flag(longer.argv, "--kv-cache-memory-bytes")) == int(1024 * 65536 * 2 * CPU_KV_SLACK)


def test_cpu_kv_cache_for_smollm2_fits_the_container_limit() -> None:
    """The issue's case: 9.1 GiB of KV cache was reserved for SmolLM2-135M on a machine with 18 GiB
    free. Now it is what 8 sequences of 2048 tokens need, and a 3 GiB container limit caps it."""
    # The engine reads the shape in the dtype it serves: auto is float32 on a CPU.
    shape = model_shape(SMOLLM2, serving_dtype("auto", "cpu"), 270_000_000)
    ram = Memory("cpu", 18 * GIB, 24 * GIB)
    auto = plan_vllm(options(max_concurrency=256, max_model_len=2048), shape, ram, FALLBACK_VLLM_OPTIONS)
    # float32 on CPU: 2 x 30 layers x 3 KV heads x 64 x 4 bytes = 46,080 bytes a token.
    assert flag(auto.argv, "--dtype") == "float32"
    assert int(flag(auto.argv, "--kv-cache-memory-bytes")) == int(
        46_080 * 2048 * 8 * CPU_KV_SLACK
    )  # 0.88 GiB
    assert any("8 sequence(s) x 2048 tokens" in line for line in auto.sizing)
    limited = with_limit(ram, 3 * GIB)
    capped = plan_vllm(options(max_concurrency=256), shape, limited, FALLBACK_VLLM_OPTIONS)
    kv = int(flag(capped.argv, "--kv-cache-memory-bytes"))
    assert kv == int((3 * GIB - 270_000_000 - CPU_RESERVE) * CPU_KV_FRACTION)
    assert kv + 270_000_000 + CPU_RESERVE <= 3 * GIB
    assert any("capped by memory" in line for line in capped.sizing)


def test_auto_dtype_is_float32_on_cpu_only() -> None:
    shape = model_shape(SMOLLM2, "auto", 270_000_000)
    cpu = plan_vllm(options(), shape, Memory("cpu", 18 * GIB, 24 * GIB), FALLBACK_VLLM_OPTIONS)
    gpu = plan_vllm(options(), shape, Memory("cuda", H100, H100), FALLBACK_VLLM_OPTIONS)
    assert (flag(cpu.argv, "--dtype"), flag(gpu.argv, "--dtype")) == ("float32", "auto")


def test_secret_options_in_the_config_are_refused() -> None:
    for key in ("api-key", "hf_token"):
        with pytest.raises(PlanError, match="Secret"):
            plan_vllm(
                options(extra={key: "s3cret"}), shape8b(), Memory("cuda", H100, H100), FALLBACK_VLLM_OPTIONS
            )


def test_cpu_kv_cache_bytes_from_config_win() -> None:
    plan = plan_vllm(
        options(extra={"kv_cache_memory_bytes": 4 * GIB}),
        shape8b(),
        Memory("cpu", 64 * GIB, 64 * GIB),
        FALLBACK_VLLM_OPTIONS,
    )
    assert plan.argv.count("--kv-cache-memory-bytes") == 1
    assert flag(plan.argv, "--kv-cache-memory-bytes") == str(4 * GIB)
    assert plan.max_model_len == 8192


def test_cpu_without_room_for_a_context_is_refused() -> None:
    with pytest.raises(PlanError, match="KV cache holds only"):
        plan_vllm(options(), shape8b(), Memory("cpu", 17 * GIB, 24 * GIB), FALLBACK_VLLM_OPTIONS)


def test_parsers_become_flags() -> None:
    plan = plan_vllm(
        options(tool_call_parser="hermes", reasoning_parser="deepseek_r1"),
        shape8b(),
        Memory("cuda", H100, H100),
        FALLBACK_VLLM_OPTIONS,
    )
    i = plan.argv.index("--enable-auto-tool-choice")
    assert plan.argv[i + 1 : i + 3] == ["--tool-call-parser", "hermes"]
    assert flag(plan.argv, "--reasoning-parser") == "deepseek_r1"


def test_adapters_enable_lora_with_largest_rank() -> None:
    adapters = [Adapter("a", Path("/ad/a"), 8), Adapter("b", Path("/ad/b"), 12)]
    plan = plan_vllm(options(adapters=adapters), shape8b(), Memory("cuda", H100, H100), FALLBACK_VLLM_OPTIONS)
    argv = plan.argv
    assert "--enable-lora" in argv
    i = argv.index("--lora-modules")
    assert argv[i + 1 : i + 3] == ["a=/ad/a", "b=/ad/b"]
    assert flag(argv, "--max-lora-rank") == "16"  # 12 rounded up to a rank vLLM accepts
    assert flag(argv, "--max-loras") == "2"
    assert plan.model_ids == ["llama", "a", "b"]


def test_hot_load_reserves_lora_room_without_initial_adapters() -> None:
    plan = plan_vllm(
        options(hot_lora_slots=4, hot_lora_max_rank=20),
        shape8b(),
        Memory("cuda", H100, H100),
        FALLBACK_VLLM_OPTIONS,
    )
    argv = plan.argv
    assert "--enable-lora" in argv and "--lora-modules" not in argv
    assert flag(argv, "--max-lora-rank") == "32"
    assert flag(argv, "--max-loras") == "4"
    assert plan.model_ids == ["llama"]


def test_hot_load_room_covers_larger_initial_adapters() -> None:
    adapters = [Adapter("a", Path("/ad/a"), 128)]
    plan = plan_vllm(
        options(adapters=adapters, hot_lora_slots=1, hot_lora_max_rank=8),
        shape8b(),
        Memory("cuda", H100, H100),
        FALLBACK_VLLM_OPTIONS,
    )
    assert flag(plan.argv, "--max-lora-rank") == "128"
    assert flag(plan.argv, "--max-loras") == "1"


def test_lora_rank_slots() -> None:
    assert [lora_rank_slot(r) for r in (1, 2, 8, 9, 64, 512)] == [1, 8, 8, 16, 64, 512]
    with pytest.raises(PlanError, match="513"):
        lora_rank_slot(513)


def test_config_section_options_pass_through() -> None:
    extra = {"max_num_seqs": 64, "enforce-eager": True, "disable-log-stats": False, "hf_overrides": {"a": 1}}
    plan = plan_vllm(options(extra=extra), shape8b(), Memory("cuda", H100, H100), FALLBACK_VLLM_OPTIONS)
    assert flag(plan.argv, "--max-num-seqs") == "64"
    assert "--enforce-eager" in plan.argv
    assert "--no-disable-log-stats" in plan.argv
    assert json.loads(flag(plan.argv, "--hf-overrides")) == {"a": 1}


def test_config_gpu_utilization_wins_over_measured() -> None:
    plan = plan_vllm(
        options(extra={"gpu-memory-utilization": 0.5}),
        shape8b(),
        Memory("cuda", H100, H100),
        FALLBACK_VLLM_OPTIONS,
    )
    assert plan.argv.count("--gpu-memory-utilization") == 1
    assert flag(plan.argv, "--gpu-memory-utilization") == "0.5"
    assert plan.max_model_len == 8192  # 40 GiB - 16 - 2 still holds 8k tokens


def test_unknown_config_key_names_it_and_close_matches() -> None:
    with pytest.raises(PlanError) as info:
        plan_vllm(
            options(extra={"max-num-seq": 8}), shape8b(), Memory("cuda", H100, H100), FALLBACK_VLLM_OPTIONS
        )
    assert "vllm.max-num-seq" in str(info.value)
    assert "max-num-seqs" in str(info.value)


def test_unknown_key_checked_against_given_options() -> None:
    # The options vLLM's own parser reports decide; the fallback list is only a fallback.
    plan = plan_vllm(options(extra={"brand-new": 1}), shape8b(), Memory("cuda", H100, H100), ["brand-new"])
    assert flag(plan.argv, "--brand-new") == "1"


def test_reserved_and_obsolete_keys() -> None:
    with pytest.raises(PlanError, match=r"vllm\.port cannot be set"):
        plan_vllm(options(extra={"port": 1}), shape8b(), Memory("cuda", H100, H100), FALLBACK_VLLM_OPTIONS)
    # Kaito's custom-config example sets tensor-parallel-size: the operator's value wins, noted.
    tp = plan_vllm(
        options(extra={"tensor-parallel-size": 2}),
        shape8b(),
        Memory("cuda", H100, H100),
        FALLBACK_VLLM_OPTIONS,
    )
    assert any(n.startswith("vllm.tensor-parallel-size ignored") for n in tp.notes)
    assert flag(tp.argv, "--tensor-parallel-size") != "2"
    # Kaito's default ConfigMap still carries swap-space: accepted, dropped, noted.
    plan = plan_vllm(
        options(extra={"swap-space": 4, "cpu-offload-gb": 0}),
        shape8b(),
        Memory("cuda", H100, H100),
        FALLBACK_VLLM_OPTIONS,
    )
    assert "--swap-space" not in plan.argv
    assert flag(plan.argv, "--cpu-offload-gb") == "0"
    assert any("swap-space" in n for n in plan.notes)


def _adapter(root: Path, name: str, config: object, weights: bool = True) -> None:
    d = root / name
    d.mkdir(parents=True)
    text = config if isinstance(config, str) else json.dumps(config)
    (d / "adapter_config.json").write_text(text)
    if weights:
        (d / "adapter_model.safetensors").write_bytes(b"x")


def test_discover_adapters_reports_and_skips_malformed(tmp_path: Path) -> None:
    _adapter(tmp_path, "good", {"r": 8})
    _adapter(tmp_path, "also-good", {"r": 4})
    _adapter(tmp_path, "bad-json", "{not json")
    _adapter(tmp_path, "no-weights", {"r": 8}, weights=False)
    _adapter(tmp_path, "rank-text", {"r": "eight"})
    (tmp_path / "not-an-adapter").mkdir()
    scan = discover_adapters(tmp_path)
    assert [(a.name, a.rank) for a in scan.adapters] == [("also-good", 4), ("good", 8)]
    assert scan.adapters[0].path == tmp_path / "also-good"
    reported = sorted(p.split(":")[0] for p in scan.problems)
    assert reported == ["adapter bad-json", "adapter no-weights", "adapter rank-text"]


def test_discover_adapters_without_directory(tmp_path: Path) -> None:
    assert discover_adapters(None).adapters == []
    assert discover_adapters(tmp_path / "missing").adapters == []


def test_read_model_shape(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA8B))
    (tmp_path / "model-00001.safetensors").write_bytes(b"0" * 1000)
    (tmp_path / "model-00002.safetensors").write_bytes(b"0" * 500)
    shape = read_model_shape(tmp_path, "auto")
    assert shape.weight_bytes == 1500
    assert shape.max_position_embeddings == 8192
    with pytest.raises(PlanError, match=r"config\.json"):
        read_model_shape(tmp_path / "nope", "auto")


def group(**kw: Any) -> Any:
    return plan_vllm(
        options(leader_address="ws-0.ws-headless", num_nodes=2, pipeline_parallel_size=2, **kw),
        shape8b(),
        Memory("cuda", H100, H100),
        FALLBACK_VLLM_OPTIONS,
    )


def test_multi_node_leader_hosts_the_rendezvous_and_serves() -> None:
    plan = group(role="leader", node_rank=0, leader_port=29600)
    assert plan.serves and plan.multi_node
    assert flag(plan.argv, "--distributed-executor-backend") == "mp"  # vLLM's own launcher, not Ray
    assert flag(plan.argv, "--nnodes") == "2"
    assert flag(plan.argv, "--node-rank") == "0"
    assert flag(plan.argv, "--master-addr") == "ws-0.ws-headless"
    assert flag(plan.argv, "--master-port") == "29600"
    assert "--headless" not in plan.argv


def test_multi_node_worker_runs_its_stage_headless() -> None:
    plan = group(role="worker", node_rank=1)
    assert not plan.serves and plan.multi_node
    assert flag(plan.argv, "--node-rank") == "1"
    assert flag(plan.argv, "--master-addr") == "ws-0.ws-headless"
    assert "--headless" in plan.argv
    # The same model flags as the leader's: each rank loads its own layers of the same model.
    leader = group(role="leader", node_rank=0)
    assert flag(plan.argv, "--pipeline-parallel-size") == flag(leader.argv, "--pipeline-parallel-size")
    assert flag(plan.argv, "--max-model-len") == flag(leader.argv, "--max-model-len")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"role": "worker", "node_rank": 2}, "outside the group of 2"),
        ({"role": "worker", "node_rank": 0}, "worker cannot have node rank 0"),
        ({"role": "leader", "node_rank": 1}, "leader cannot have node rank 1"),
        ({"role": "worker", "node_rank": 1, "num_nodes": 1}, "pipeline-parallel-size of 2 or more"),
        ({"role": "boss", "node_rank": 1}, "unknown multi-node role"),
    ],
)
def test_multi_node_group_mistakes_are_named(kw: dict[str, Any], match: str) -> None:
    base: dict[str, Any] = {"leader_address": "ws-0.ws-headless", "num_nodes": 2, "pipeline_parallel_size": 2}
    with pytest.raises(PlanError, match=match):
        plan_vllm(options(**{**base, **kw}), shape8b(), Memory("cuda", H100, H100), FALLBACK_VLLM_OPTIONS)


def test_single_node_has_no_group_and_multi_node_needs_leader() -> None:
    plan = plan_vllm(options(), shape8b(), Memory("cuda", H100, H100), FALLBACK_VLLM_OPTIONS)
    assert plan.serves and not plan.multi_node
    for name in ("--distributed-executor-backend", "--nnodes", "--node-rank", "--headless"):
        assert name not in plan.argv
    with pytest.raises(PlanError, match="leader-address"):
        plan_vllm(options(role="worker"), shape8b(), Memory("cuda", H100, H100), FALLBACK_VLLM_OPTIONS)


@pytest.mark.parametrize("key", ["nnodes", "node-rank", "master-addr", "master_port", "headless"])
def test_config_cannot_reshape_the_group(key: str) -> None:
    with pytest.raises(PlanError, match=f"vllm.{key} cannot be set"):
        plan_vllm(options(extra={key: "1"}), shape8b(), Memory("cuda", H100, H100), FALLBACK_VLLM_OPTIONS)


def test_adapter_dir_that_is_one_adapter_is_served_under_its_name(tmp_path: Path) -> None:
    # What `kaitopy tune pull --dest my-adapter` leaves: the adapter's files at the top.
    one = tmp_path / "my-adapter"
    one.mkdir()
    (one / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (one / "adapter_model.safetensors").write_bytes(b"")
    scan = discover_adapters(one)
    assert [(a.name, a.path, a.rank) for a in scan.adapters] == [("my-adapter", one, 8)]
    assert scan.problems == []


def test_adapter_dir_with_files_but_no_adapter_says_so(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("x")
    (tmp_path / "sub").mkdir()
    scan = discover_adapters(tmp_path)
    assert scan.adapters == []
    assert len(scan.problems) == 1 and "holds no adapter" in scan.problems[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert discover_adapters(empty).problems == []  # the controller's empty mount: nothing to say


@pytest.mark.parametrize(
    ("device", "pp", "extra", "expected"),
    [
        # CPU pipeline stages need the compiled model: the server asks for it...
        ("cpu", 2, {}, CPU_PIPELINE_COMPILATION),
        # ...unless the config chose (the user's choice, even a failing one, is passed on as given).
        ("cpu", 2, {"compilation-config": '{"mode": 3}'}, '{"mode": 3}'),
        ("cpu", 2, {"enforce-eager": True}, None),
        # One stage on CPU, or any layout on GPUs: vLLM's own default.
        ("cpu", 1, {}, None),
        ("cuda", 2, {}, None),
    ],
)
def test_cpu_pipeline_stages_run_compiled(
    device: str, pp: int, extra: dict[str, Any], expected: str | None
) -> None:
    memory = Memory(device, 16 * GIB, 16 * GIB) if device == "cpu" else Memory("cuda", H100, H100)
    plan = plan_vllm(
        options(pipeline_parallel_size=pp, extra=extra, max_model_len=4096),
        shape8b(),
        memory,
        FALLBACK_VLLM_OPTIONS,
    )
    if expected is None:
        assert "--compilation-config" not in plan.argv
    else:
        assert plan.argv.count("--compilation-config") == 1
        assert flag(plan.argv, "--compilation-config") == expected
