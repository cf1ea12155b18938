"""The vLLM engine's process and HTTP handling against a stand-in child (tests/support/fake_vllm.py),
so forwarding, SSE splitting, error mapping, metrics, health following and child death are covered on
machines without vLLM too (the real child: test_vllm_engine.py)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from kaitopy.inference.engine import RequestError
from kaitopy.inference.settings import ServeSettings
from kaitopy.inference.vllm_engine import VllmEngine

FAKE = Path(__file__).resolve().parents[2] / "support" / "fake_vllm.py"
CONFIG = {
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_size": 128,
    "max_position_embeddings": 512,
}


class Fake:
    def __init__(self, engine: VllmEngine, flag: Path, deaths: list[int]) -> None:
        self.engine = engine
        self.flag = flag
        self.deaths = deaths


@pytest_asyncio.fixture
async def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Fake]:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(CONFIG))
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    python.chmod(0o755)
    flag = tmp_path / "unhealthy"
    monkeypatch.setenv("FAKE_VLLM_UNHEALTHY", str(flag))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))
    deaths: list[int] = []
    settings = ServeSettings(engine="vllm", model_dir=model, served_model_name="tiny", dtype="float32")
    engine = VllmEngine(
        settings, python=str(python), startup_timeout=60, metrics_interval=0.1, on_child_death=deaths.append
    )
    await engine.start()
    try:
        yield Fake(engine, flag, deaths)
    finally:
        await engine.stop()


async def test_forwards_and_maps(fake: Fake) -> None:
    engine = fake.engine
    assert engine.ready()
    assert engine.model_ids() == ["tiny"]
    result = await engine.chat_completion({"model": "tiny", "messages": [], "max_tokens": 3})
    assert isinstance(result, dict)
    assert result["choices"][0]["message"]["content"] == "tiny-0 tiny-1 tiny-2"
    assert result["usage"]["completion_tokens"] == 3
    # No model: the base model answers.
    result = await engine.chat_completion({"messages": [], "max_tokens": 1})
    assert isinstance(result, dict)
    assert result["model"] == "tiny"

    stream = await engine.chat_completion({"model": "tiny", "messages": [], "max_tokens": 5, "stream": True})
    assert not isinstance(stream, dict)
    chunks = [c async for c in stream]
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == [
        "tiny-0",
        " tiny-1",
        " tiny-2",
        " tiny-3",
        " tiny-4",
    ]

    with pytest.raises(RequestError) as info:
        await engine.chat_completion({"model": "other", "messages": []})
    assert (info.value.status, info.value.code) == (404, "model_not_found")
    with pytest.raises(RequestError) as info:
        await engine.chat_completion({"model": "tiny", "messages": [], "temperature": "hot"})
    assert (info.value.status, info.value.param) == (400, "temperature")
    with pytest.raises(RequestError) as info:
        await engine.chat_completion({"model": "tiny", "messages": [], "max_tokens": 9999, "stream": True})
    assert (info.value.status, info.value.param, info.value.code) == (
        400,
        "messages",
        "context_length_exceeded",
    )

    counted = await engine.count_prompt_tokens(
        {"model": "tiny", "messages": [{"role": "user", "content": "a b"}]}
    )
    assert counted == 5


async def test_metrics_are_cached_and_filtered(fake: Fake) -> None:
    for _ in range(50):
        if fake.engine.extra_metrics():
            break
        await asyncio.sleep(0.05)
    text = fake.engine.extra_metrics().decode()
    assert 'vllm:num_requests_running{model_name="tiny"} 0.0' in text
    assert "python_gc" not in text


async def test_unhealthy_child_makes_engine_unready_until_it_recovers(fake: Fake) -> None:
    fake.flag.touch()
    for _ in range(100):
        if not fake.engine.ready():
            break
        await asyncio.sleep(0.05)
    assert not fake.engine.ready()
    fake.flag.unlink()
    for _ in range(100):
        if fake.engine.ready():
            break
        await asyncio.sleep(0.05)
    assert fake.engine.ready()
    assert fake.deaths == []


async def test_child_death_is_reported(fake: Fake) -> None:
    child = fake.engine._child
    assert child is not None
    child.kill()
    for _ in range(100):
        if fake.deaths:
            break
        await asyncio.sleep(0.05)
    assert fake.deaths == [-9]
    assert not fake.engine.ready()
    with pytest.raises(RequestError) as info:
        await fake.engine.chat_completion({"model": "tiny", "messages": []})
    assert info.value.status == 503
