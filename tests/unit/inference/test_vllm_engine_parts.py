"""The vLLM engine's pure parts: memory parsing, error mapping, metrics filtering, adapter scaling."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from kaitopy.inference.childlog import RepeatFilter
from kaitopy.inference.vllm_args import Adapter, PlanError, adapter_shape_problem, weight_module_names
from kaitopy.inference.vllm_engine import (
    compile_cache,
    compile_notice,
    filter_metrics,
    redacted,
    request_error,
    scaled_adapter,
)
from kaitopy.inference.vllm_memory import MIB, cpu_memory, parse_meminfo, parse_nvidia_smi

MEMINFO = "MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   16000000 kB\n"


def test_nvidia_smi_takes_the_fullest_gpu() -> None:
    memory = parse_nvidia_smi("79000, 81559\n41000, 81559\n")
    assert memory is not None
    assert memory.device == "cuda"
    assert memory.free_bytes == 41000 * MIB
    assert memory.total_bytes == 81559 * MIB
    assert parse_nvidia_smi("No devices were found\n") is None


def test_meminfo_and_cgroup_limit() -> None:
    assert parse_meminfo(MEMINFO) == (16000000 * 1024, 24000000 * 1024)
    assert parse_meminfo("MemTotal: 1 kB\n") is None
    unlimited = cpu_memory(MEMINFO, "max\n", "100\n")
    assert unlimited.free_bytes == 16000000 * 1024
    limited = cpu_memory(MEMINFO, str(8 * 1024**3), str(3 * 1024**3))
    assert limited.device == "cpu"
    assert limited.free_bytes == 5 * 1024**3
    assert limited.total_bytes == 8 * 1024**3
    with pytest.raises(RuntimeError, match="MemAvailable"):
        cpu_memory("", None, None)


def test_child_error_json_keeps_status_message_and_param() -> None:
    payload = {
        "error": {"message": "n must be positive", "type": "BadRequestError", "param": "n", "code": 400}
    }
    err = request_error(400, payload, "raw")
    # vLLM's own type names give way to OpenAI's, as the transformers engine answers.
    assert (err.status, err.message, err.param, err.type) == (
        400,
        "n must be positive",
        "n",
        "invalid_request_error",
    )
    assert err.code is None  # vLLM's numeric code is the status again, not an OpenAI error code
    validation = {"error": {"message": "Input should be a valid number", "param": "body.temperature"}}
    assert request_error(400, validation, "raw").param == "temperature"
    plain = request_error(422, None, "Unprocessable")
    assert (plain.status, plain.message, plain.param) == (422, "Unprocessable", None)


def test_raw_validation_dumps_become_one_line_naming_the_field() -> None:
    dump = (
        "[{'type': 'float_parsing', 'loc': ('body', 'temperature'), 'msg': 'Input should be a valid "
        "number, unable to parse string as a number', 'input': 'hot'}]"
    )
    err = request_error(400, {"error": {"message": dump, "type": "Bad Request", "code": 400}}, "raw")
    assert err.message == "temperature: Input should be a valid number, unable to parse string as a number"
    assert (err.param, err.type, err.code) == ("temperature", "invalid_request_error", None)
    assert err.to_json() == {
        "error": {
            "message": err.message,
            "type": "invalid_request_error",
            "param": "temperature",
            "code": None,
        }
    }


def test_context_overflow_is_context_length_exceeded_on_the_input() -> None:
    message = "max_tokens=600 cannot be greater than max_model_len=512. (parameter=max_tokens, value=600)"
    payload = {"error": {"message": message, "type": "BadRequestError", "param": "max_tokens", "code": 400}}
    err = request_error(400, payload, "raw", "prompt")
    assert (err.param, err.code, err.message) == ("prompt", "context_length_exceeded", message)
    long_prompt = {
        "error": {"message": "This model's maximum context length is 512 tokens.", "param": "input_tokens"}
    }
    assert request_error(400, long_prompt, "raw").param == "messages"


def test_metrics_keep_only_vllm_families() -> None:
    text = (
        b"# HELP python_gc_objects_collected_total Objects\n"
        b"# TYPE python_gc_objects_collected_total counter\n"
        b'python_gc_objects_collected_total{generation="0"} 1.0\n'
        b"# HELP vllm:num_requests_running Running\n"
        b"# TYPE vllm:num_requests_running gauge\n"
        b'vllm:num_requests_running{model_name="tiny"} 0.0\n'
        b"process_resident_memory_bytes 1.0\n"
    )
    kept = filter_metrics(text).decode().splitlines()
    assert kept == [
        "# HELP vllm:num_requests_running Running",
        "# TYPE vllm:num_requests_running gauge",
        'vllm:num_requests_running{model_name="tiny"} 0.0',
    ]
    assert filter_metrics(b"python_info 1\n") == b""


def test_scaled_adapter_scales_alpha_and_links_weights(tmp_path: Path) -> None:
    source = tmp_path / "src" / "alpha"
    source.mkdir(parents=True)
    (source / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16}))
    (source / "adapter_model.safetensors").write_bytes(b"weights")
    scaled = scaled_adapter(Adapter("alpha", source, 8), 0.25, tmp_path / "work")
    assert scaled.name == "alpha"
    assert scaled.path == tmp_path / "work" / "alpha"
    assert json.loads((scaled.path / "adapter_config.json").read_text())["lora_alpha"] == 4.0
    assert (scaled.path / "adapter_model.safetensors").is_symlink()
    assert (scaled.path / "adapter_model.safetensors").read_bytes() == b"weights"
    # The source is left alone.
    assert json.loads((source / "adapter_config.json").read_text())["lora_alpha"] == 16


def _safetensors(path: Path, names: list[str], shapes: dict[str, list[int]] | None = None) -> None:
    given = shapes or {}
    header: dict[str, object] = {
        n: {"dtype": "F32", "shape": given.get(n, [1]), "data_offsets": [4 * i, 4 * i + 4]}
        for i, n in enumerate(names)
    }
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4 * len(names))


def test_module_names_from_safetensors_headers(tmp_path: Path) -> None:
    _safetensors(
        tmp_path / "model-1.safetensors", ["model.layers.0.self_attn.q_proj.weight", "lm_head.weight"]
    )
    _safetensors(tmp_path / "model-2.safetensors", ["model.layers.1.mlp.up_proj.weight", "model.norm.weight"])
    assert weight_module_names(tmp_path) == [
        "lm_head",
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.mlp.up_proj",
        "model.norm",
    ]
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\0\0\0\0\0\0\0{nope")
    with pytest.raises(PlanError, match="bad"):
        weight_module_names(tmp_path)


def test_adapter_shapes_checked_against_the_base(tmp_path: Path) -> None:
    base = {"model.layers.0.self_attn.q_proj.weight": [128, 64]}
    a_key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    b_key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    good = tmp_path / "good"
    good.mkdir()
    _safetensors(good / "adapter_model.safetensors", [a_key, b_key], {a_key: [8, 64], b_key: [128, 8]})
    assert adapter_shape_problem(good, 8, base) is None
    bad = tmp_path / "bad"
    bad.mkdir()
    _safetensors(bad / "adapter_model.safetensors", [a_key, b_key], {a_key: [9, 64], b_key: [129, 8]})
    problem = adapter_shape_problem(bad, 8, base)
    assert problem is not None
    assert "lora_A" in problem
    assert "[9, 64]" in problem
    assert "[8, 64]" in problem
    # A LoRA on a layer the base model does not have.
    assert adapter_shape_problem(good, 8, {"model.norm.weight": [64]}) is not None


def test_a_start_that_compiles_says_so_once_the_cache_holds_nothing(tmp_path: Path) -> None:
    env = {"VLLM_CACHE_ROOT": str(tmp_path)}
    notice = compile_notice(env, ["--model", "/m"])
    assert notice is not None and "compiles the model" in notice and str(tmp_path) in notice
    assert compile_notice(env, ["--model", "/m", "--compilation-config", '{"mode": 0}']) is None
    (tmp_path / "torch_compile_cache" / "abc").mkdir(parents=True)
    assert compile_notice(env, ["--model", "/m"]) is None
    assert compile_cache({"HOME": "/h"}) == Path("/h/.cache/vllm/torch_compile_cache")


def test_repeated_warnings_pass_once_other_lines_always() -> None:
    lines = [
        "(Worker pid=1) WARNING 12-04 10:03:59 [cpu.py:1] Casting torch.bfloat16 to torch.float32.",
        "(VllmWorker-0 pid=2) WARNING 12-04 10:04:00 [cpu.py:1] Casting torch.bfloat16 to torch.float32.",
        "/x.py:1: FutureWarning: `reduce_op` is deprecated",
        "  warnings.warn(",
        "/x.py:1: FutureWarning: `reduce_op` is deprecated",
        "  warnings.warn(",
        "INFO 12-04 10:04:01 [core.py:1] step",
        "INFO 12-04 10:04:01 [core.py:1] step",
        "WARNING 12-04 10:04:02 [cpu.py:9] another warning",
    ]
    repeats = RepeatFilter()
    kept = [line for line in lines if repeats.keep(line)]
    assert kept == [lines[0], lines[2], lines[3], lines[6], lines[7], lines[8]]
    assert repeats.dropped == 3


def test_engine_dead_report_is_left_out_only_while_stopping() -> None:
    report = [
        "(APIServer pid=1) ERROR 12-04 10:18:10 [async_llm.py:906] AsyncLLM output_handler failed.",
        "(APIServer pid=1) ERROR 12-04 10:18:10 [async_llm.py:906] Traceback (most recent call last):",
        "(APIServer pid=1) ERROR 12-04 10:18:10 [async_llm.py:906] EngineDeadError: x",
    ]
    running = RepeatFilter()
    assert all(running.keep(line) for line in report)  # while serving it is a real failure: shown
    stopping = RepeatFilter()
    stopping.stopping = True
    assert not any(stopping.keep(line) for line in report)
    assert stopping.shutdown_dropped == 3
    assert stopping.keep("(APIServer pid=1) ERROR 12-04 10:18:10 [core.py:1] something else")


def test_logged_argv_masks_secret_looking_options() -> None:
    argv = ["--model", "/m", "--some-token", "abc", "--client-secret=xyz", "--max-lora-rank", "8", "--flag"]
    assert redacted(argv) == [
        "--model",
        "/m",
        "--some-token",
        "***",
        "--client-secret=***",
        "--max-lora-rank",
        "8",
        "--flag",
    ]
