"""The vLLM engine against a real vLLM child serving the tiny model on CPU.

Greedy float32 output must equal transformers (+peft) token for token, for the base model and an
adapter: the child runs the same weights, so any difference is a planning or forwarding bug.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from kaitopy.inference.engine import RequestError
from kaitopy.inference.settings import InferenceConfig, ServeSettings
from kaitopy.inference.vllm_args import FALLBACK_VLLM_OPTIONS
from kaitopy.inference.vllm_engine import VllmEngine
from kaitopy.inference.vllm_options import known_vllm_options
from tests.support.tinymodel import build_tiny_adapter, build_tiny_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]

BASE = "tiny"
ADAPTER = "alpha"
HALF = "alpha-half"  # alpha at strength 0.5
MESSAGES = [{"role": "user", "content": "hello world , tell me about the operator"}]
MAX_TOKENS = 12


@dataclass
class Served:
    engine: VllmEngine
    model_dir: Path
    adapters: Path
    deaths: list[int] = field(default_factory=list)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("vllm")
    model = build_tiny_model(root / "model")
    adapters = root / "adapters"
    alpha = build_tiny_adapter(model, adapters / ADAPTER)
    shutil.copytree(alpha, adapters / HALF)
    broken = adapters / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    return model, adapters


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(files: tuple[Path, Path]) -> AsyncIterator[Served]:
    model, adapters = files
    deaths: list[int] = []
    settings = ServeSettings(
        engine="vllm",
        model_dir=model,
        served_model_name=BASE,
        dtype="float32",
        adapter_dir=adapters,
        adapter_strengths={HALF: 0.5},
        config=InferenceConfig(vllm={"max-num-seqs": 16}),
    )
    engine = VllmEngine(settings, startup_timeout=300, metrics_interval=0.5, on_child_death=deaths.append)
    await engine.start()
    try:
        yield Served(engine, model, adapters, deaths)
    finally:
        await engine.stop()


def hf_greedy(model_dir: Path, adapter: Path | None, scale: float = 1.0) -> tuple[list[int], list[int]]:
    """(prompt ids, generated ids) from transformers (+peft) greedy decoding in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        if scale != 1.0:
            for module in model.modules():
                if hasattr(module, "scaling") and isinstance(module.scaling, dict):
                    module.scaling = {k: v * scale for k, v in module.scaling.items()}
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False)
    return ids[0].tolist(), out[0, ids.shape[1] :].tolist()


def body(model: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": MESSAGES,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "return_token_ids": True,
        **extra,
    }


async def chat(engine: VllmEngine, request: dict[str, Any]) -> dict[str, Any]:
    result = await engine.chat_completion(request)
    assert isinstance(result, dict)
    return result


@pytest.mark.asyncio(loop_scope="module")
async def test_serves_base_and_good_adapters_only(served: Served) -> None:
    assert served.engine.ready()
    assert served.engine.model_ids() == [BASE, ADAPTER, HALF]


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    ("model", "adapter", "scale"), [(BASE, None, 1.0), (ADAPTER, ADAPTER, 1.0), (HALF, ADAPTER, 0.5)]
)
async def test_greedy_tokens_equal_transformers(
    served: Served, model: str, adapter: str | None, scale: float
) -> None:
    prompt_ids, expected = await asyncio.to_thread(
        hf_greedy, served.model_dir, served.adapters / adapter if adapter else None, scale
    )
    result = await chat(served.engine, body(model))
    assert result["prompt_token_ids"] == prompt_ids
    assert result["choices"][0]["token_ids"] == expected
    assert result["usage"]["completion_tokens"] == len(expected)
    assert result["usage"]["prompt_tokens"] == len(prompt_ids)


@pytest.mark.asyncio(loop_scope="module")
async def test_adapter_changes_the_output(served: Served) -> None:
    base = await chat(served.engine, body(BASE))
    tuned = await chat(served.engine, body(ADAPTER))
    assert base["choices"][0]["token_ids"] != tuned["choices"][0]["token_ids"]


@pytest.mark.asyncio(loop_scope="module")
async def test_streaming_chunks_add_up_to_the_whole_answer(served: Served) -> None:
    whole = await chat(served.engine, body(ADAPTER))
    stream = await served.engine.chat_completion(body(ADAPTER, stream=True))
    assert not isinstance(stream, dict)
    chunks = [chunk async for chunk in stream]
    assert len(chunks) >= MAX_TOKENS // 2
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


@pytest.mark.asyncio(loop_scope="module")
async def test_completion_endpoint(served: Served) -> None:
    result = await served.engine.completion({"model": BASE, "prompt": "hello world", "max_tokens": 4})
    assert isinstance(result, dict)
    assert result["object"] == "text_completion"
    assert result["usage"]["completion_tokens"] == 4


@pytest.mark.asyncio(loop_scope="module")
async def test_unknown_model_is_404(served: Served) -> None:
    with pytest.raises(RequestError) as info:
        await served.engine.chat_completion(body("nope"))
    assert info.value.status == 404
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"


@pytest.mark.asyncio(loop_scope="module")
async def test_child_client_errors_keep_status_message_and_param(served: Served) -> None:
    with pytest.raises(RequestError) as info:
        await served.engine.chat_completion(body(BASE, temperature="hot"))
    assert info.value.status == 400
    assert info.value.param == "temperature"
    assert info.value.message
    # Output that cannot fit the context is OpenAI's context_length_exceeded on the input.
    with pytest.raises(RequestError) as info:
        await served.engine.completion({"model": BASE, "prompt": "hello", "max_tokens": 100_000})
    assert (info.value.status, info.value.param, info.value.code) == (
        400,
        "prompt",
        "context_length_exceeded",
    )
    assert "max_tokens" in info.value.message
    # A stream's error comes before the first chunk, so the front can still answer with its status.
    with pytest.raises(RequestError) as info:
        await served.engine.chat_completion(body(BASE, stream=True, max_tokens=100_000))
    assert (info.value.status, info.value.param) == (400, "messages")


@pytest.mark.asyncio(loop_scope="module")
async def test_prompt_tokens_counted_by_the_child(served: Served) -> None:
    result = await chat(served.engine, body(BASE, max_tokens=1))
    assert await served.engine.count_prompt_tokens(body(BASE)) == result["usage"]["prompt_tokens"]
    completion = await served.engine.completion({"model": BASE, "prompt": "hello world", "max_tokens": 1})
    assert isinstance(completion, dict)
    counted = await served.engine.count_prompt_tokens({"model": BASE, "prompt": "hello world"})
    assert counted == completion["usage"]["prompt_tokens"]


@pytest.mark.asyncio(loop_scope="module")
async def test_metrics_are_vllms_own_families(served: Served) -> None:
    await chat(served.engine, body(BASE))
    for _ in range(50):
        text = served.engine.extra_metrics()
        if b"vllm:request_success_total" in text:
            break
        await asyncio.sleep(0.2)
    assert b"vllm:request_success_total" in text
    assert b"python_gc_objects_collected_total" not in text
    assert all(line.startswith((b"vllm:", b"# HELP vllm:", b"# TYPE vllm:")) for line in text.splitlines())


@pytest.mark.asyncio(loop_scope="module")
async def test_concurrent_requests_are_batched_not_serialized(served: Served) -> None:
    results = await asyncio.gather(*(chat(served.engine, body(BASE)) for _ in range(8)))
    ids = {json.dumps(r["choices"][0]["token_ids"]) for r in results}
    assert len(ids) == 1  # greedy: the same answer whichever batch it ran in


async def test_options_fallback_list_is_a_subset_of_vllms_parser() -> None:
    # vLLM's parser is read in a child process, as the server reads it: importing vLLM into this
    # test process would make the suite depend on what earlier tests imported (setuptools' own
    # distutils check fails once the standard library's distutils is loaded).
    real = await known_vllm_options()
    assert real is not FALLBACK_VLLM_OPTIONS, "reading vLLM's options in a child process failed"
    assert set(real) >= FALLBACK_VLLM_OPTIONS, sorted(FALLBACK_VLLM_OPTIONS - set(real))
    assert "max-num-seqs" in real


@pytest.mark.asyncio(loop_scope="module")
async def test_child_death_makes_the_engine_unready_and_reports_it(served: Served) -> None:
    # Last in the module: it ends the shared child.
    child = served.engine._child
    assert child is not None
    child.kill()
    for _ in range(100):
        if served.deaths:
            break
        await asyncio.sleep(0.1)
    assert served.deaths == [-9]
    assert not served.engine.ready()
    with pytest.raises(RequestError) as info:
        await served.engine.chat_completion(body(BASE))
    assert info.value.status == 503
