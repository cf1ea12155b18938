"""The HTTP front with a scripted engine: what it does with whatever an engine returns or raises."""

from __future__ import annotations

import asyncio
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


MSGS = [{"role": "user", "content": "x"}]
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
        assert (await response.json())["error"]["type"] == "server_error"
    assert (await http.get("/v1/models")).status == 503
    assert engine.calls == []


async def test_missing_model_means_the_base(http: TestClient[Any, Any], engine: ScriptedEngine) -> None:
    engine.answer = {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}
    response = await http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert response.status == 200
    assert engine.calls[0]["model"] == "base"


async def test_stream_framing_and_hidden_usage(http: TestClient[Any, Any], engine: ScriptedEngine) -> None:
    engine.answer = [CHUNK, CHUNK, USAGE]
    response = await http.post(
        "/v1/chat/completions", json={"model": "base", "stream": True, "messages": MSGS}
    )
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
        "/v1/completions",
        json={"model": "lora", "prompt": "x", "stream": True, "stream_options": {"include_usage": True}},
    )
    assert events(await response.text()) == [CHUNK, USAGE, "[DONE]"]


async def test_error_midstream_travels_in_the_stream(
    http: TestClient[Any, Any], engine: ScriptedEngine
) -> None:
    engine.answer = [CHUNK, CHUNK, CHUNK]
    engine.fail_after = 1
    response = await http.post(
        "/v1/chat/completions", json={"model": "base", "stream": True, "messages": MSGS}
    )
    got = events(await response.text())
    assert got[0] == CHUNK
    assert got[1]["error"]["message"] == "went wrong midway"
    assert "[DONE]" not in got


async def test_error_before_the_first_chunk_is_a_status(
    http: TestClient[Any, Any], engine: ScriptedEngine
) -> None:
    engine.answer = [CHUNK]
    engine.fail_after = 0
    response = await http.post(
        "/v1/chat/completions", json={"model": "base", "stream": True, "messages": MSGS}
    )
    assert response.status == 400
    assert (await response.json())["error"]["message"] == "went wrong midway"


async def test_engine_bug_is_a_500_not_a_hang(http: TestClient[Any, Any], engine: ScriptedEngine) -> None:
    engine.answer = ZeroDivisionError("oops")
    response = await http.post("/v1/chat/completions", json={"model": "base", "messages": MSGS})
    assert response.status == 500
    body = await response.json()
    assert body["error"]["type"] == "server_error"
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


class HeldEngine(ScriptedEngine):
    """Holds every generation until released, so the one slot stays taken."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def chat_completion(self, body: dict[str, Any]) -> EngineResult:
        self.calls.append(body)
        self.started.set()
        await self.release.wait()
        return {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}


def front(engine: ScriptedEngine, **options: Any) -> TestServer:
    return TestServer(InferenceServer(engine, Admission(1, 0), ServerMetrics(), **options).app())


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"model": "nope", "messages": MSGS}, 404, "model", "model_not_found"),
        ({"model": "base", "messages": "hi"}, 400, "messages", None),
        ({"model": "base", "messages": MSGS, "temperature": "hot"}, 400, "temperature", None),
        ({"model": "base", "messages": MSGS, "max_tokens": 5000}, 400, "max_tokens", "max_tokens_exceeded"),
        ({"model": "base", "messages": MSGS, "max_tokens": 0}, 400, "max_tokens", None),
    ],
)
async def test_invalid_requests_are_refused_at_once_even_with_the_queue_full(
    body: dict[str, Any], status: int, param: str, code: str | None
) -> None:
    engine = HeldEngine()
    async with TestClient(front(engine)) as http:
        held = asyncio.create_task(
            http.post("/v1/chat/completions", json={"model": "base", "messages": MSGS})
        )
        await asyncio.wait_for(engine.started.wait(), 5)
        # The only slot is taken and nobody may wait: a valid request would be 429, these are not.
        async with asyncio.timeout(2):
            response = await http.post("/v1/chat/completions", json=body)
        assert response.status == status
        assert await response.json() == {
            "error": {
                "message": (await response.json())["error"]["message"],
                "type": "invalid_request_error",
                "param": param,
                "code": code,
            }
        }
        assert "Retry-After" not in response.headers
        valid = await http.post("/v1/chat/completions", json={"model": "base", "messages": MSGS})
        assert valid.status == 429
        engine.release.set()
        assert (await held).status == 200
    assert len(engine.calls) == 1


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "base", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"model": "base", "messages": ' + b"[" * 40 + b"]" * 40 + b"}",
        b"\xff\xfe",
    ],
)
async def test_nested_or_malformed_json_is_400_not_500(http: TestClient[Any, Any], raw: bytes) -> None:
    response = await http.post("/v1/chat/completions", data=raw)
    assert response.status == 400
    assert set((await response.json())["error"]) == {"message", "type", "param", "code"}


async def test_bearer_token_guards_the_api_but_not_the_probes() -> None:
    engine = ScriptedEngine()
    engine.answer = {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
    async with TestClient(front(engine, api_key="s3cret-token")) as http:
        body = {"model": "base", "messages": MSGS}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
            for path in ("/v1/chat/completions", "/v1/completions", "/chat"):
                response = await http.post(path, json=body, headers=headers)
                assert response.status == 401, (path, headers)
                assert response.headers["WWW-Authenticate"] == "Bearer"
                error = (await response.json())["error"]
                assert error["code"] == "invalid_api_key" and "s3cret" not in error["message"]
            assert (await http.get("/v1/models", headers=headers)).status == 401
        ok = {"Authorization": "Bearer s3cret-token"}
        assert (await http.post("/v1/chat/completions", json=body, headers=ok)).status == 200
        assert (await http.get("/v1/models", headers=ok)).status == 200
        for open_path in ("/health", "/", "/metrics"):
            assert (await http.get(open_path)).status == 200
    assert len(engine.calls) == 1


class SlowEngine(ScriptedEngine):
    async def chat_completion(self, body: dict[str, Any]) -> EngineResult:
        self.calls.append(body)
        if body.get("stream"):
            return self._slow_chunks()
        await asyncio.sleep(30)
        return {}

    async def _slow_chunks(self) -> AsyncIterator[dict[str, Any]]:
        yield CHUNK
        await asyncio.sleep(30)
        yield CHUNK


async def test_a_request_past_its_deadline_is_504_and_frees_the_slot() -> None:
    engine = SlowEngine()
    async with TestClient(front(engine, request_timeout_s=0.3)) as http:
        async with asyncio.timeout(5):
            response = await http.post("/v1/chat/completions", json={"model": "base", "messages": MSGS})
        assert response.status == 504
        error = (await response.json())["error"]
        assert (error["type"], error["code"]) == ("server_error", "request_timeout")
        async with asyncio.timeout(5):
            stream = await http.post(
                "/v1/chat/completions", json={"model": "base", "messages": MSGS, "stream": True}
            )
            got = events(await stream.text())
        assert stream.status == 200
        assert got[0] == CHUNK and got[1]["error"]["code"] == "request_timeout"
        # The slot came back both times: a third request is admitted, not refused.
        engine.answer = {}
        again = await http.post("/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 1})
        assert again.status == 504
