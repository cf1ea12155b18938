"""KaitoFront, the ASGI middleware that puts kaitopy's rules inside vLLM's server, around a small ASGI
app that answers the way vLLM's does (its real server is in tests/integration/inference)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from kaitopy.inference.vllm_front import FrontConfig, KaitoFront, _loading_reply

Message = dict[str, Any]


class FakeVllm:
    """Streams three SSE events and a usage event for completions; answers /tokenize, /health and
    /metrics; a 400 in vLLM's own shape for `"prompt": "bad"`. `gate` holds a generation open."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        # Each generation request as it arrived: its raw body and its content-length header.
        self.received: list[tuple[bytes, bytes]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if path == "/health":
            await self._send(send, 200, b"")
            return
        if path == "/metrics":
            await self._send(send, 200, b"# HELP python_gc x\nvllm:num_requests_running 0.0\n")
            return
        body = json.loads(raw)
        if path == "/tokenize":
            await self._send(send, 200, json.dumps({"count": 5}).encode())
            return
        self.bodies.append(body)
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        self.received.append((raw, length))
        if body.get("prompt") == "bad":
            error = {
                "error": {"message": "bad prompt", "type": "BadRequestError", "param": None, "code": 400}
            }
            await self._send(send, 400, json.dumps(error).encode())
            return
        self.entered.set()
        await self.gate.wait()
        if not body.get("stream"):
            result = {
                "choices": [{"text": "ab", "message": {"content": "ab"}}],
                "usage": {"completion_tokens": 2},
            }
            await self._send(send, 200, json.dumps(result).encode())
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for text in ("a", "b"):
            event = {"choices": [{"text": text}]}
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + json.dumps(event).encode() + b"\n\n",
                    "more_body": True,
                }
            )
        usage = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
        tail = b"data: " + json.dumps(usage, separators=(",", ":")).encode() + b"\n\ndata: [DONE]\n\n"
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _send(self, send: Any, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def front(fake: FakeVllm, **overrides: Any) -> KaitoFront:
    config: dict[str, Any] = {
        "model_ids": ["tiny", "alpha"],
        "max_model_len": 512,
        "max_concurrency": 1,
        "max_queue": 0,
        "default_max_tokens": 64,
        "max_tokens_limit": 128,
        "request_timeout_s": 30.0,
    }
    return KaitoFront(fake, FrontConfig(**(config | overrides)))


async def call(
    app: KaitoFront,
    path: str,
    body: dict[str, Any] | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    post = body is not None or raw is not None
    if raw is None:
        raw = json.dumps(body).encode() if body is not None else b""
    scope = {
        "type": "http",
        "method": "POST" if post else "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers or [],
    }
    sent = False
    status = 0
    out_headers: dict[str, str] = {}
    parts: list[bytes] = []

    async def receive() -> Message:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            out_headers.update({k.decode(): v.decode() for k, v in message.get("headers", [])})
        else:
            parts.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, out_headers, b"".join(parts)


async def test_invalid_requests_are_refused_before_admission_even_with_the_queue_full() -> None:
    fake = FakeVllm()
    fake.gate.clear()
    app = front(fake)
    held = asyncio.create_task(call(app, "/v1/completions", {"model": "tiny", "prompt": "x", "stream": True}))
    await asyncio.wait_for(fake.entered.wait(), 5)
    status, _, raw = await call(app, "/v1/completions", {"model": "nope", "prompt": "x"})
    assert status == 404 and json.loads(raw)["error"]["code"] == "model_not_found"
    status, _, raw = await call(app, "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 500})
    assert status == 400 and json.loads(raw)["error"]["param"] == "max_tokens"
    status, headers, raw = await call(app, "/v1/completions", {"model": "tiny", "prompt": "x"})
    assert status == 429 and headers["Retry-After"] == "1"
    assert json.loads(raw)["error"]["type"] == "rate_limit_error"
    fake.gate.set()
    assert (await held)[0] == 200


async def test_default_max_tokens_is_capped_by_the_room_left() -> None:
    fake = FakeVllm()
    await call(front(fake), "/v1/completions", {"prompt": "x"})
    await call(front(fake, max_model_len=20), "/v1/completions", {"prompt": "x"})
    assert [b["max_tokens"] for b in fake.bodies] == [64, 15]
    assert fake.bodies[0]["model"] == "tiny"


async def test_stream_usage_is_counted_and_cut_unless_asked() -> None:
    fake = FakeVllm()
    app = front(fake)
    _, _, plain = await call(app, "/v1/completions", {"prompt": "x", "stream": True, "max_tokens": 2})
    _, _, asked = await call(
        app,
        "/v1/completions",
        {"prompt": "x", "stream": True, "max_tokens": 2, "stream_options": {"include_usage": True}},
    )
    assert fake.bodies[0]["stream_options"] == {"include_usage": True}
    assert b"usage" not in plain and plain.endswith(b"data: [DONE]\n\n")
    assert b'"usage":{' in asked
    metrics = app.metrics.exposition().decode()
    assert 'kaitopy_inference_completion_tokens_total{model="tiny"} 4.0' in metrics
    # One first-token time per stream, not one per part.
    assert 'kaitopy_inference_time_to_first_token_seconds_count{endpoint="/v1/completions"} 2.0' in metrics


async def test_a_complete_request_reaches_vllm_as_the_client_sent_it() -> None:
    fake = FakeVllm()
    app = front(fake)
    # Model, max_tokens and include_usage given: nothing to add, so no new encoding and no new header.
    sent = (
        b'{ "model" : "tiny", "prompt": "x", "max_tokens": 2, "stream": true,\n'
        b'  "stream_options": {"include_usage": true} }'
    )
    headers = [(b"content-length", str(len(sent)).encode())]
    status, _, out = await call(app, "/v1/completions", headers=headers, raw=sent)
    assert status == 200 and b'"usage":{' in out
    assert fake.received == [(sent, str(len(sent)).encode())]
    # A default to add: the body is encoded again and its length follows.
    await call(app, "/v1/completions", {"prompt": "x", "stream": True, "max_tokens": 2}, headers=headers)
    raw, length = fake.received[1]
    assert json.loads(raw)["stream_options"] == {"include_usage": True} and length == str(len(raw)).encode()


async def test_non_streamed_usage_is_counted_and_the_body_passes_whole() -> None:
    app = front(FakeVllm())
    status, _, raw = await call(app, "/v1/completions", {"prompt": "x", "max_tokens": 2})
    assert status == 200 and json.loads(raw)["usage"] == {"completion_tokens": 2}
    metrics = app.metrics.exposition().decode()
    assert 'kaitopy_inference_completion_tokens_total{model="tiny"} 2.0' in metrics
    assert (
        'kaitopy_inference_requests_total{endpoint="/v1/completions",model="tiny",status="200"} 1.0'
        in metrics
    )


async def test_running_and_queued_gauges_follow_admission() -> None:
    fake = FakeVllm()
    fake.gate.clear()
    app = front(fake, max_queue=1)
    held = asyncio.create_task(call(app, "/v1/completions", {"prompt": "x", "max_tokens": 2}))
    await asyncio.wait_for(fake.entered.wait(), 5)
    waiting = asyncio.create_task(call(app, "/v1/completions", {"prompt": "y", "max_tokens": 2}))
    # Admission has no event to wait on; the second request reaches its queue within a few turns.
    while app.admission.waiting == 0:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    metrics = app.metrics.exposition().decode()
    assert "kaitopy_inference_running_requests 1.0" in metrics
    assert "kaitopy_inference_queue_depth 1.0" in metrics
    fake.gate.set()
    assert (await held)[0] == 200 and (await waiting)[0] == 200
    metrics = app.metrics.exposition().decode()
    assert "kaitopy_inference_running_requests 0.0" in metrics
    assert "kaitopy_inference_queue_depth 0.0" in metrics


async def test_vllm_errors_leave_in_openai_shape() -> None:
    status, _, raw = await call(front(FakeVllm()), "/v1/completions", {"prompt": "bad", "max_tokens": 2})
    assert status == 400
    assert json.loads(raw) == {
        "error": {"message": "bad prompt", "type": "invalid_request_error", "param": None, "code": None}
    }


async def test_api_key_guards_the_api_but_not_probes_or_metrics() -> None:
    app = front(FakeVllm(), api_key="s3cret")
    status, headers, _ = await call(app, "/v1/completions", {"prompt": "x"})
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert (await call(app, "/chat", {"prompt": "x"}))[0] == 401
    auth = [(b"authorization", b"Bearer s3cret")]
    assert (await call(app, "/v1/completions", {"prompt": "x", "max_tokens": 2}, auth))[0] == 200
    assert (await call(app, "/health"))[0] == 200
    status, _, metrics = await call(app, "/metrics")
    assert status == 200 and b"vllm:num_requests_running" in metrics and b"python_gc" not in metrics


async def test_kaito_chat_runs_through_vllms_handler() -> None:
    fake = FakeVllm()
    status, _, _ = await call(front(fake), "/chat", {"prompt": "x", "generate_kwargs": {"max_length": 9}})
    assert status == 200
    assert fake.bodies[0]["max_tokens"] == 4  # max_length 9 less the prompt's 5 tokens


def test_loading_answer_is_503_with_the_right_body() -> None:
    health = _loading_reply(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert health.startswith(b"HTTP/1.1 503 ") and health.endswith(b'{"status":"loading"}')
    other = _loading_reply(b"POST /v1/completions HTTP/1.1\r\n\r\n")
    assert b"the model is still loading" in other


async def test_a_failure_inside_vllm_is_an_openai_500() -> None:
    async def broken(scope: Message, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    app = KaitoFront(broken, front(FakeVllm()).config)
    status, _, raw = await call(app, "/v1/completions", {"prompt": "x", "max_tokens": 2})
    assert status == 500 and json.loads(raw)["error"]["message"] == "internal error while generating"


class FakeLora(FakeVllm):
    """vLLM's runtime LoRA routes: 200 for a load of any name but "broken", 200 for an unload."""

    def __init__(self) -> None:
        super().__init__()
        self.lora_calls: list[tuple[str, str]] = []

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["path"] not in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            await super().__call__(scope, receive, send)
            return
        body = json.loads((await receive())["body"])
        self.lora_calls.append((scope["path"], body["lora_name"]))
        if body["lora_name"] == "broken":
            error = {"error": {"message": "no adapter there", "type": "BadRequestError", "code": 400}}
            await self._send(send, 400, json.dumps(error).encode())
            return
        await self._send(send, 200, b"Success")


CONTROL = [(b"x-kaitopy-control", b"t0ken")]


async def test_lora_routes_answer_only_the_supervisor_and_the_model_list_follows_them() -> None:
    fake = FakeLora()
    app = front(fake, control_token="t0ken", api_key="s3cret")
    auth = [(b"authorization", b"Bearer s3cret")]
    # A client, even with the API key, cannot load a file of the pod or drop an adapter.
    for headers in (auth, [*auth, (b"x-kaitopy-control", b"guess")]):
        status, _, raw = await call(
            app, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/"}, headers
        )
        assert status == 404 and json.loads(raw)["error"]["message"].startswith("Not Found")
        assert (await call(app, "/v1/unload_lora_adapter", {"lora_name": "alpha"}, headers))[0] == 404
        assert (await call(app, "/kaitopy/adapter-status", {"adapters": []}, headers))[0] == 404
    assert fake.lora_calls == []

    request = {"model": "beta", "prompt": "x", "max_tokens": 2}
    assert (await call(app, "/v1/completions", request, auth))[0] == 404
    assert (await call(app, "/v1/load_lora_adapter", {"lora_name": "beta", "lora_path": "/a"}, CONTROL))[
        0
    ] == 200
    assert (await call(app, "/v1/completions", request, auth))[0] == 200
    status, _, raw = await call(
        app, "/v1/load_lora_adapter", {"lora_name": "broken", "lora_path": "/b"}, CONTROL
    )
    assert status == 400 and json.loads(raw)["error"]["message"] == "no adapter there"
    assert (await call(app, "/v1/unload_lora_adapter", {"lora_name": "beta"}, CONTROL))[0] == 200
    assert (await call(app, "/v1/completions", request, auth))[0] == 404
    assert app.model_ids == ["tiny", "alpha"]


async def test_lora_routes_are_closed_without_a_control_token() -> None:
    fake = FakeLora()
    app = front(fake)
    assert (await call(app, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/"}, CONTROL))[0] == 404
    assert fake.lora_calls == []


async def test_adapters_reports_what_the_supervisor_posted() -> None:
    app = front(FakeLora(), control_token="t0ken")
    status, _, raw = await call(app, "/adapters")
    assert status == 200
    assert json.loads(raw) == {
        "observed": "",
        "adapters": [{"name": "alpha", "image": "", "state": "Ready", "reason": ""}],
    }
    posted = {"observed": "abc", "adapters": [{"name": "beta", "state": "Pulling", "reason": ""}]}
    assert (await call(app, "/kaitopy/adapter-status", posted, CONTROL))[0] == 204
    status, _, raw = await call(app, "/adapters")
    assert status == 200 and json.loads(raw) == posted
