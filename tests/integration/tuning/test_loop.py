"""The whole loop: tune an adapter, push it as an image, pull it the way the inference pod's init
container copies it, serve it with `kaitopy serve`, and chat with it through the openai client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration.tuning.conftest import WORDS
from tests.support import registry as registry_support

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not registry_support.available(), reason="needs Debian's docker-registry package"),
]

ADAPTER = "colors"  # the adapter's directory name is its model name
BASE = "tiny"
# As in the training data (tests/integration/tuning/conftest.py).
MESSAGES = [{"role": "system", "content": "answer with colors"}, {"role": "user", "content": "say red"}]
CONFIG = """
training_config:
  LoraConfig:
    r: 8
    lora_alpha: 16
    target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"]
  TrainingArguments:
    learning_rate: 0.01
    max_steps: 80
    logging_steps: 20
    per_device_train_batch_size: 4
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tune(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "kaitopy", "tune", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 0, f"tune {args[0]} failed:\n{result.stderr[-3000:]}"
    return result


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"kaitopy serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError:
            pass  # 503 while loading
        except OSError:
            pass  # not listening yet
        time.sleep(0.1)
    raise AssertionError(f"kaitopy serve was not ready in {timeout}s:\n{log.read_text()}")


def _reference(model_dir: Path, adapter: Path | None, max_new_tokens: int) -> str:
    """Greedy text from transformers (and peft) directly, outside the server."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.eval().generate(input_ids=ids, do_sample=False, max_new_tokens=max_new_tokens)
    return str(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def test_tune_push_pull_serve(tiny_model: Path, chat_data: Path, tmp_path: Path) -> None:
    import openai

    config = tmp_path / "training_config.yaml"
    config.write_text(CONFIG)
    results = tmp_path / "results"
    _tune(
        "train", "--method=lora", f"--model-dir={tiny_model}", "--hf-model-id=tiny/llama",
        f"--data-dir={chat_data}", f"--output-dir={results}", f"--config={config}",
    )  # fmt: skip

    adapters = tmp_path / "adapters"
    with registry_support.run_registry(tmp_path / "registry") as registry:
        secret = registry.docker_config(tmp_path / ".dockerconfigjson")
        image = f"{registry.host}/adapters/{ADAPTER}:v1"
        pushed = _tune(
            "push", f"--dir={results}", f"--image={image}", f"--docker-config={secret}", "--plain-http"
        )
        assert pushed.stdout.strip().startswith(f"{image}@sha256:")
        # What the init container does: mkdir adapters/NAME && cp -r /data/. adapters/NAME/
        _tune(
            "pull",
            f"--image={image}",
            f"--dest={adapters / ADAPTER}",
            f"--docker-config={secret}",
            "--plain-http",
        )
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (adapters / ADAPTER / name).read_bytes() == (results / name).read_bytes()

    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kaitopy",
                "serve",
                "--engine=transformers",
                f"--model-dir={tiny_model}",
                f"--served-model-name={BASE}",
                "--hf-model-id=",
                "--dtype=float32",
                f"--adapter-dir={adapters}",
                f"--port={port}",
                "--host=127.0.0.1",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc, log)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == [BASE, ADAPTER]

        def chat(model: str) -> str:
            response = client.chat.completions.create(
                model=model,
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=8,
                temperature=0,
            )
            return response.choices[0].message.content or ""

        tuned, base = chat(ADAPTER), chat(BASE)
        assert tuned != base
        # The served adapter is the trained one: the server says what peft says with those files.
        assert tuned.strip() == _reference(tiny_model, adapters / ADAPTER, 8).strip()
        assert base.strip() == _reference(tiny_model, None, 8).strip()
        # And it learned the data: a random 195-word model now answers in the data's ten words.
        assert tuned.split() and set(tuned.split()) <= set(WORDS), tuned
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    summary = json.loads((results / "training_result.json").read_text())
    assert summary["step"] == 80
