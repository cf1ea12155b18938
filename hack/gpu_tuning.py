"""LoRA and QLoRA with kaitopy's own trainer on a real CUDA GPU, for the figures CPU runs cannot
give: time per step and peak GPU memory at bfloat16 (LoRA) and with a 4-bit base (QLoRA).

The model is a generated Llama (random weights; ~0.9 B parameters by default) with the test
tokenizer, so nothing is downloaded; the data is the tuning tests' chat rows. Run on a machine with
torch, transformers, peft (and bitsandbytes for QLoRA), from the repository root:

    PYTHONPATH=src:. python hack/gpu_tuning.py --out /tmp/gpu-tuning [--steps 30]

It writes `figures.json` there and prints one line per method.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

TRAINING = """
training_config:
  ModelConfig:
    torch_dtype: bfloat16
  LoraConfig:
    r: 16
    lora_alpha: 32
    target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"]
  TrainingArguments:
    learning_rate: 0.0002
    max_steps: {steps}
    logging_steps: 10
    per_device_train_batch_size: 8
"""


def build_model(directory: Path, hidden: int, layers: int) -> int:
    import torch
    from tests.support.tinymodel import build_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 128,
        num_key_value_heads=max(1, hidden // 512),
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def write_data(directory: Path) -> None:
    words = ["red", "green", "blue", "cat", "dog", "sky", "sea", "tree", "sun", "moon"]
    rows = []
    for i in range(256):
        a, b = words[i % len(words)], words[(i * 3 + 1) % len(words)]
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "answer with colors"},
                    {"role": "user", "content": f"say {a} " * 8},
                    {"role": "assistant", "content": f"{a} {b} " * 16},
                ]
            }
        )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def run(method: str, model_dir: Path, data: Path, out: Path, steps: int) -> dict[str, Any]:
    import torch

    from kaitopy.tuning.train import TrainRequest, train

    config = out / f"{method}.yaml"
    config.write_text(TRAINING.format(steps=steps))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    outcome = train(
        TrainRequest(
            method=method,
            model_dir=model_dir,
            hf_model_id="generated/llama",
            data_dir=data,
            results_dir=out / method,
            config_path=config,
        )
    )
    seconds = time.monotonic() - started
    result = json.loads((outcome.output_dir / "training_result.json").read_text())
    return {
        "method": method,
        "steps": outcome.step,
        "completed": outcome.completed,
        "seconds_total": round(seconds, 1),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "result": result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--methods", default="lora,qlora")
    args = parser.parse_args()
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "torch": torch.__version__,
    }
    model_dir, data = args.out / "model", args.out / "data"
    figures["parameters"] = build_model(model_dir, args.hidden, args.layers)
    write_data(data)
    for method in args.methods.split(","):
        try:
            figures[method] = run(method, model_dir, data, args.out, args.steps)
        except Exception as err:  # report every method, even after one fails
            figures[method] = {"method": method, "error": f"{type(err).__name__}: {err}"}
        print(json.dumps(figures[method]), flush=True)
    (args.out / "figures.json").write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
