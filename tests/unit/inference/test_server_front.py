"""The HTTP front with a scripted engine: what it does with whatever an engine returns or raises."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from kaitopy.inference.admission import Admission
from kaitopy.inference.engine import EngineResult, RequestError
from kaitopy.inference.metrics import ServerMetrics
from kaitopy.inference.server import InferenceServer


class ScriptedEngine:
    """Answers from a script: a dict, a list of chunks (streamed), or an exception to raise."""

    name = "scripted"

    def __init__(self) -> None:
        self.loaded = True
        self.answer: Any = {}
        self.fail_after: int | None = None
        self.calls: list[dict[str, Any]] = []
        self.extra = b"# HELP engine_up Up\n# TYPE engine_up gauge\nengine_up 1.0\n"

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def ready(self) -> bool:
        return self.loaded

    def model_ids(self) -> list[str]:
        return ["base", "lora"]

    def extra_metrics(self) -> bytes:
        if isinstance(self.extra, Exception):
            raise self.extra
        return self.extra

    async def _chunks(self) -> AsyncIterator[dict[str, Any]]:
        for i, chunk in enumerate(self.answer):
            if self.fail_after is not None and i == self.fail_after:
                raise RequestError("went wrong midway")
            yield chunk

    async def chat_completion(self, body: dict[str, Any]) -> EngineResult:
        self.calls.append(body)
        if isinstance(self.answer, Exception):
            raise self.answer
        if isinstance(self.answer, list):
            return self._chunks()
        answer: dict[str, Any] = self.answer
        return answer

    async def completion(self, body: dict[str, Any]) -> EngineResult:
        return await self.chat_completion(body)


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture
async def http(engine: ScriptedEngine) -> AsyncIterator[TestClient[Any, Any]]:
    front = InferenceServer(engine, Admission(1, 0), ServerMetrics())
    async with TestClient(TestServer(front.app())) as c:
        yield c


CHUNK = {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
USAGE = {
    "id": "c",
    "object": "chat.completion.chunk",
    "choices": [],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1},
}


def events(text: str) -> list[Any]:
    return [json.loads(e[6:]) if e[6:] != "[DONE]" else "[DONE]" for e in text.split("\n\n") if e]


async def test_not_ready_is_503_everywhere(http: TestClient[Any, Any], engine: ScriptedEngine) -> None:
    engine.loaded = False
    assert (await http.get("/health")).status == 503
    for path in ("/v1/chat/completions", "/v1/completions", "/chat"):
        response = await http.post(path, json={"model": "base", "prompt": "x", "messages": []})
        assert response.status == 503
        assert (await response.json())["error"]["type"] == "service_unavailable"
    assert (await http.get("/v1/models")).status == 503
    assert engine.calls == []


async def test_missing_model_means_the_base(http: TestClient[Any, Any], engine: ScriptedEngine) -> None:
    engine.answer = {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}
    response = await http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert response.status == 200
    assert engine.calls[0]["model"] == "base"


async def test_stream_framing_and_hidden_usage(http: TestClient[Any, Any], engine: ScriptedEngine) -> None:
    engine.answer = [CHUNK, CHUNK, USAGE]
    response = await http.post("/v1/chat/completions", json={"model": "base", "stream": True})
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert events(await response.text()) == [CHUNK, CHUNK, "[DONE]"]
    # The front asked the engine for usage to count tokens, though the client did not.
    assert engine.calls[0]["stream_options"] == {"include_usage": True}
    metrics = await (await http.get("/metrics")).text()
    assert 'kaitopy_inference_prompt_tokens_total{model="base"} 3.0' in metrics


async def test_stream_usage_when_asked(http: TestClient[Any, Any], engine: ScriptedEngine) -> None:
    engine.answer = [CHUNK, USAGE]
    response = await http.post(
        "/v1/completions", json={"model": "lora", "stream": True, "stream_options": {"include_usage": True}}
    )
    assert events(await response.text()) == [CHUNK, USAGE, "[DONE]"]


async def test_error_midstream_travels_in_the_stream(
    http: TestClient[Any, Any], engine: ScriptedEngine
) -> None:
    engine.answer = [CHUNK, CHUNK, CHUNK]
    engine.fail_after = 1
    response = await http.post("/v1/chat/completions", json={"model": "base", "stream": True})
    got = events(await response.text())
    assert got[0] == CHUNK
    assert got[1]["error"]["message"] == "went wrong midway"
    assert "[DONE]" not in got


async def test_error_before_the_first_chunk_is_a_status(
    http: TestClient[Any, Any], engine: ScriptedEngine
) -> None:
    engine.answer = [CHUNK]
    engine.fail_after = 0
    response = await http.post("/v1/chat/completions", json={"model": "base", "stream": True})
    assert response.status == 400
    assert (await response.json())["error"]["message"] == "went wrong midway"


async def test_engine_bug_is_a_500_not_a_hang(http: TestClient[Any, Any], engine: ScriptedEngine) -> None:
    engine.answer = ZeroDivisionError("oops")
    response = await http.post("/v1/chat/completions", json={"model": "base"})
    assert response.status == 500
    body = await response.json()
    assert body["error"]["type"] == "internal_error"
    assert "oops" not in body["error"]["message"]


async def test_metrics_carry_the_engines_own(http: TestClient[Any, Any], engine: ScriptedEngine) -> None:
    text = await (await http.get("/metrics")).text()
    assert "engine_up 1.0" in text
    assert "kaitopy_inference_queue_depth" in text
    engine.extra = RuntimeError("scrape failed")  # type: ignore[assignment]
    response = await http.get("/metrics")
    assert response.status == 200
    assert "kaitopy_inference_queue_depth" in await response.text()


async def test_aiohttp_refusals_are_openai_errors(http: TestClient[Any, Any]) -> None:
    response = await http.get("/v1/chat/completions")
    assert response.status == 405
    assert (await response.json())["error"]["message"]
    response = await http.post("/v1/chat/completions", data=b"x" * (33 * 1024 * 1024))
    assert response.status == 413
    assert (await response.json())["error"]["message"]


async def test_models_list_shape(http: TestClient[Any, Any]) -> None:
    body = await (await http.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [(m["id"], m["parent"]) for m in body["data"]] == [("base", None), ("lora", "base")]


async def test_kaito_chat_without_token_counting(http: TestClient[Any, Any], engine: ScriptedEngine) -> None:
    engine.answer = {"choices": [{"text": " there"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
    response = await http.post("/chat", json={"prompt": "hello", "generate_kwargs": {"max_length": 9}})
    assert await response.json() == {"Result": "hello there"}
    # This engine cannot count prompt tokens: max_length bounds the new tokens alone.
    assert engine.calls[0]["max_tokens"] == 9
