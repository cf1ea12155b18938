"""`kaitopy tune train` as the Job runs it: LoRA on the tiny model, checkpoints, resume, errors."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PROGRESS = re.compile(r" step \d+/\d+ epoch [\d.]+ loss ")

CONFIG = """
training_config:
  LoraConfig:
    r: 8
    lora_alpha: 16
    target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"]
  TrainingArguments:
    learning_rate: 0.01
    max_steps: {max_steps}
    per_device_train_batch_size: 4
    logging_steps: 2
    save_steps: {save_steps}
    eval_strategy: steps
    eval_steps: 6
  DatasetConfig:
    train_test_split: 0.75
"""


def _config(tmp: Path, max_steps: int = 12, save_steps: int = 100) -> Path:
    path = tmp / "training_config.yaml"
    path.write_text(CONFIG.format(max_steps=max_steps, save_steps=save_steps))
    return path


def _argv(model: Path, data: Path, out: Path, config: Path | None, method: str = "lora") -> list[str]:
    # The trainer container's argv, as controllers/workspace/job.py writes it.
    argv = [
        sys.executable,
        "-m",
        "kaitopy",
        "tune",
        "train",
        f"--method={method}",
        f"--model-dir={model}",
        "--hf-model-id=tiny/llama",
        f"--data-dir={data}",
        f"--output-dir={out}",
    ]
    if config is not None:
        argv.append(f"--config={config}")
    return argv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def _generate(model_dir: Path, adapter: Path | None) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "say red"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    return [int(t) for t in out[0][ids["input_ids"].shape[1] :]]


def _adapter_weights(out: Path) -> dict[str, object]:
    from safetensors.torch import load_file

    return dict(load_file(str(out / "adapter_model.safetensors")))


def test_lora_tunes_the_tiny_model(tiny_model: Path, chat_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = _run(_argv(tiny_model, chat_data, out, _config(tmp_path)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "checkpoints").exists()  # removed once the adapter is written
    summary = json.loads((out / "training_result.json").read_text())
    assert summary["step"] == 12 and math.isfinite(summary["loss"]) and math.isfinite(summary["eval_loss"])
    # Progress lines with step, loss and ETA; the loss fell.
    lines = [ln for ln in result.stderr.splitlines() if PROGRESS.search(ln)]
    assert len(lines) == 6 and "step 12/12" in lines[-1] and " eta " in lines[-1]
    losses = [float(ln.split(" loss ")[1].split()[0]) for ln in lines]
    assert losses[-1] < losses[0]
    assert "step 6 eval loss" in result.stderr
    metrics = (out / "metrics.prom").read_text()
    assert 'kaitopy_tuning_step{method="lora"} 12.0' in metrics
    assert 'kaitopy_tuning_completed{method="lora"} 1.0' in metrics
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny/llama" and config["r"] == 8
    # peft loads it onto the base model, and it changes what the model says.
    assert _generate(tiny_model, out) != _generate(tiny_model, None)
    # A rerun after completion has nothing to do.
    again = _run(_argv(tiny_model, chat_data, out, _config(tmp_path)))
    assert again.returncode == 0 and "nothing to do" in again.stderr


def test_resume_from_checkpoint_matches_an_uninterrupted_run(
    tiny_model: Path, chat_data: Path, tmp_path: Path
) -> None:
    config = _config(tmp_path, max_steps=10, save_steps=100)
    straight = tmp_path / "straight"
    assert _run(_argv(tiny_model, chat_data, straight, config)).returncode == 0

    out = tmp_path / "interrupted"
    first = _run([*_argv(tiny_model, chat_data, out, config), "--stop-after-steps=4"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file()
    assert not (out / "adapter_model.safetensors").exists()
    assert 'kaitopy_tuning_checkpoint_step{method="lora"} 4.0' in (out / "metrics.prom").read_text()

    second = _run(_argv(tiny_model, chat_data, out, config))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from checkpoint-4 (step 4 of 10)" in second.stderr
    steps = [ln.split(" step ")[1].split()[0] for ln in second.stderr.splitlines() if PROGRESS.search(ln)]
    assert steps == ["6/10", "8/10", "10/10"]  # it did not start over
    summary = json.loads((out / "training_result.json").read_text())
    assert summary["resumed_from"] == 4 and summary["step"] == 10

    import torch

    a, b = _adapter_weights(straight), _adapter_weights(out)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key  # type: ignore[arg-type]


def test_sigterm_saves_a_checkpoint_and_a_rerun_continues(
    tiny_model: Path, chat_data: Path, tmp_path: Path
) -> None:
    config = _config(tmp_path, max_steps=5000, save_steps=100_000)
    out = tmp_path / "results"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    port = _free_port()
    proc = subprocess.Popen(
        [*_argv(tiny_model, chat_data, out, config), f"--metrics-port={port}"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        if " step 4/5000 " in line:
            break
        assert time.monotonic() < deadline, "training never reached step 4"
    # The live metrics endpoint serves the run's progress.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        live = resp.read().decode()
    assert 'kaitopy_tuning_total_steps{method="lora"} 5000.0' in live
    live_step = float(live.split('kaitopy_tuning_step{method="lora"} ')[1].split()[0])
    assert live_step >= 4
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 143, rest[-2000:]
    saved = [p for p in (out / "checkpoints").iterdir() if p.name.startswith("checkpoint-")]
    assert len(saved) == 1
    step = int(saved[0].name.split("-")[1])
    assert step >= 4 and f"stopping at step {step} of 5000 (SIGTERM)" in rest
    rerun = _run([*_argv(tiny_model, chat_data, out, config), "--stop-after-steps=1"])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from checkpoint-{step} (step {step} of 5000)" in rerun.stderr
    assert (out / "checkpoints" / f"checkpoint-{step + 1}").is_dir()


def test_bad_config_fails_before_any_model_load(chat_data: Path, tmp_path: Path) -> None:
    config = tmp_path / "training_config.yaml"
    config.write_text("training_config:\n  TrainingArguments:\n    learning_rat: 0.1\n")
    started = time.monotonic()
    # The model directory does not even exist: the config must be rejected first.
    result = _run(_argv(tmp_path / "no-model", chat_data, tmp_path / "out", config))
    assert result.returncode == 1
    assert "unknown key 'TrainingArguments.learning_rat' (did you mean 'learning_rate'?)" in result.stderr
    assert time.monotonic() - started < 60


def test_output_dir_outside_results(chat_data: Path, tmp_path: Path) -> None:
    config = tmp_path / "training_config.yaml"
    config.write_text("training_config:\n  TrainingArguments:\n    output_dir: /etc/adapter\n")
    result = _run(_argv(tmp_path / "no-model", chat_data, tmp_path / "out", config))
    assert result.returncode == 1 and "outside the results directory" in result.stderr


def test_qlora_on_cpu_says_a_gpu_is_needed(chat_data: Path, tmp_path: Path) -> None:
    result = _run(_argv(tmp_path / "no-model", chat_data, tmp_path / "out", None, method="qlora"))
    assert result.returncode == 1
    assert "qlora needs a CUDA GPU" in result.stderr


def test_bad_data_row_is_reported(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "only"}\n')
    result = _run(_argv(tmp_path / "no-model", data, tmp_path / "out", None))
    assert result.returncode == 1
    assert "train.jsonl, row 2: has prompt but no completion" in result.stderr


def test_check_only_validates_without_a_model(chat_data: Path, tmp_path: Path) -> None:
    result = _run(
        [*_argv(tmp_path / "no-model", chat_data, tmp_path / "out", _config(tmp_path)), "--check-only"]
    )
    assert result.returncode == 0, result.stderr
    assert "16 examples are valid" in result.stderr
