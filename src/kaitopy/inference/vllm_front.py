"""kaitopy's routes and rules inside vLLM's own OpenAI server: one HTTP server per request.

`python -m kaitopy.inference.vllm_front <vLLM server flags> --middleware
kaitopy.inference.vllm_front.KaitoFront` runs vLLM's server with KaitoFront wrapped around its app.
KaitoFront answers Kaito's /chat, /, /health and /metrics itself and, for the OpenAI generation
routes, checks the request (instant 4xx), applies the max_tokens default and limit, holds an
admission slot (429 + Retry-After when the queue is full) and the request deadline (504), then hands
the request to vLLM's handler in the same process. vLLM's error bodies leave in OpenAI's shape.

The settings come from the parent (`kaitopy serve`) in $KAITOPY_FRONT, a JSON object (FrontConfig).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from kaitopy.inference import kaito_chat, validation
from kaitopy.inference.admission import Admission, QueueFull
from kaitopy.inference.engine import RequestError, queue_full, request_timed_out
from kaitopy.inference.metrics import ServerMetrics
from kaitopy.inference.validation import Limits

log = logging.getLogger(__name__)

FRONT_ENV = "KAITOPY_FRONT"
MIDDLEWARE = "kaitopy.inference.vllm_front.KaitoFront"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
KAITO_CHAT = "/chat"
ADAPTERS = "/adapters"
# vLLM's runtime LoRA routes: only `kaitopy serve` (hot-load) may call them, never a client (a client
# could otherwise load any file of the pod as an adapter, or drop the ones the Workspace lists).
LORA_LOAD = "/v1/load_lora_adapter"
LORA_UNLOAD = "/v1/unload_lora_adapter"
# Where `kaitopy serve` posts hot-load's per-adapter states for GET /adapters.
ADAPTER_STATUS = "/kaitopy/adapter-status"
CONTROL_PATHS = frozenset({LORA_LOAD, LORA_UNLOAD, ADAPTER_STATUS})
# The header that carries the control token (FrontConfig.control_token) on those routes.
CONTROL_HEADER = b"x-kaitopy-control"
# Test hook (as in app.py): hold the load back so a test can watch /health answer 503 first.
LOAD_DELAY_ENV = "KAITOPY_LOAD_DELAY_S"
MAX_BODY_BYTES = 32 * 1024 * 1024
GUARDED_PREFIXES = ("/v1/", KAITO_CHAT)

# An SSE event that carries token counts (vLLM writes `"usage":null` in the others, if at all).
_USAGE = b'"usage":{'

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class FrontConfig:
    model_ids: list[str]
    max_model_len: int
    max_concurrency: int
    max_queue: int
    default_max_tokens: int
    max_tokens_limit: int
    request_timeout_s: float
    api_key: str | None = None
    retry_after_s: int = 1
    # A secret `kaitopy serve` made for this start: the control routes answer only requests carrying
    # it (None: they answer nobody). From the environment, like the API key, never the argv.
    control_token: str | None = None

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str] | None = None) -> FrontConfig:
        raw = (environ if environ is not None else os.environ).get(FRONT_ENV)
        if not raw:
            raise RuntimeError(
                f"${FRONT_ENV} is not set: start this server with `kaitopy serve --engine=vllm`"
            )
        return cls(**json.loads(raw))


def _guarded(path: str) -> bool:
    return any(path == p.rstrip("/") or path.startswith(p) for p in GUARDED_PREFIXES)


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> None:
    raw_headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    # Names as written (Retry-After): HTTP does not care, but some clients' header maps do.
    raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _error(send: Send, err: RequestError, headers: dict[str, str] | None = None) -> None:
    await _respond(send, err.status, _json_bytes(err.to_json()), headers)


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestError(f"request body over {MAX_BODY_BYTES} bytes", status=413)
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)


def _client_error(status: int, raw: bytes, input_param: str) -> RequestError:
    """vLLM's error body in OpenAI's shape (the same mapping the two-hop engine applies)."""
    from kaitopy.inference.vllm_engine import request_error

    text = raw.decode(errors="replace")
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    return request_error(status, payload, text.strip(), input_param)


def _needs_max_tokens(body: dict[str, Any]) -> bool:
    return body.get("max_tokens") is None and body.get("max_completion_tokens") is None


class _Relay:
    """The `send` vLLM's handler writes its response through. A success passes through as vLLM wrote
    it: per body part one flag test, one byte search for the usage event (counted, and cut out when
    the client did not ask for it) and the first part's time; no parsing, no copy. An error body is
    collected and leaves in OpenAI's shape."""

    def __init__(self, send: Send, input_param: str, state: dict[str, Any]) -> None:
        self._send = send
        self._input_param = input_param
        # Read by the caller: "status" once the response started, "started" once headers went out.
        self.state = state
        self.on_first: Callable[[], None] | None = None
        self.on_usage: Callable[[bytes], bytes] | None = None
        # A non-streamed success's body parts, kept for its usage (None: not kept).
        self.collect: list[bytes] | None = None
        self._passing = False
        self._error: list[bytes] = []

    async def send(self, message: Message) -> None:
        if self._passing and message["type"] == "http.response.body":
            # The path every token takes.
            if self.on_first is not None and message.get("body"):
                self.on_first()
                self.on_first = None
            if self.on_usage is not None:
                part = message.get("body", b"")
                if _USAGE in part:
                    message = {**message, "body": self.on_usage(part)}
            elif self.collect is not None:
                self.collect.append(message.get("body", b""))
            await self._send(message)
            return
        await self._slow(message)

    async def _slow(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            status = int(message["status"])
            self.state["status"] = status
            if status < 400:
                self._passing = self.state["started"] = True
                await self._send(message)
            return
        if kind != "http.response.body" or self.state.get("status", 200) < 400:
            await self._send(message)
            return
        self._error.append(message.get("body", b""))
        if message.get("more_body"):
            return
        err = _client_error(self.state["status"], b"".join(self._error), self._input_param)
        self.state["started"] = True
        await _error(self._send, err)


class _Series:
    """KaitoFront's labelled metric series, each looked up once and then reused."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics
        self._requests: dict[tuple[str, str, int], Any] = {}
        self._latency: dict[str, Any] = {}
        self._ttft: dict[str, Any] = {}

    def finished(self, endpoint: str, model: str, status: int, started: float) -> None:
        key = (endpoint, model, status)
        count = self._requests.get(key)
        if count is None:
            count = self._requests[key] = self._metrics.requests.labels(endpoint, model, str(status))
        count.inc()
        latency = self._latency.get(endpoint)
        if latency is None:
            latency = self._latency[endpoint] = self._metrics.latency.labels(endpoint)
        latency.observe(time.monotonic() - started)

    def first_token(self, endpoint: str, started: float) -> Callable[[], None]:
        series = self._ttft.get(endpoint)
        if series is None:
            series = self._ttft[endpoint] = self._metrics.time_to_first_token.labels(endpoint)

        def observe() -> None:
            series.observe(time.monotonic() - started)

        return observe

    def count_usage(self, model: str, usage: object) -> None:
        self._metrics.count_usage(model, usage)

    def usage_events(self, model: str, client_usage: bool) -> Callable[[bytes], bytes]:
        """For a body part that holds a usage event: count the final one (it has no choices; with
        continuous_usage_stats the others carry running totals, which must not be counted again) and
        cut it out when the client did not ask for usage."""

        def on_usage(part: bytes) -> bytes:
            kept: list[bytes] = []
            for event in part.split(b"\n\n"):
                if _USAGE in event and event.startswith(b"data: "):
                    with contextlib.suppress(ValueError, TypeError):
                        chunk = json.loads(event[6:])
                        if not chunk.get("choices"):
                            self.count_usage(model, chunk.get("usage"))
                            if not client_usage:
                                continue
                kept.append(event)
            return b"\n\n".join(kept)

        return on_usage


class KaitoFront:
    """ASGI middleware around vLLM's FastAPI app (vLLM adds it for `--middleware`)."""

    def __init__(self, app: ASGIApp, config: FrontConfig | None = None) -> None:
        self.app = app
        self.config = config or FrontConfig.from_env()
        self.metrics = ServerMetrics()
        self.limits = Limits(max_tokens_limit=self.config.max_tokens_limit)
        self.admission = Admission(self.config.max_concurrency, self.config.max_queue)
        # Read at scrape time: nothing to update on the path every request takes.
        self.metrics.queue_depth.set_function(lambda: self.admission.waiting)
        self.metrics.running.set_function(lambda: self.admission.running)
        # The labelled series, looked up once each (a labels() call takes a lock and builds a key).
        self._series = _Series(self.metrics)
        self._key = self.config.api_key.encode() if self.config.api_key else None
        self._control = self.config.control_token.encode() if self.config.control_token else None
        # The base model, then the adapters served now: hot-load adds and removes adapters.
        self.model_ids = list(self.config.model_ids)
        # Hot-load's states as `kaitopy serve` last posted them (None: hot-load is off).
        self.adapter_status: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path in CONTROL_PATHS:
            await self._control_call(scope, receive, send, path)
            return
        if self._key is not None and _guarded(path) and not self._authorized(scope):
            err = RequestError(
                "missing or wrong API key: send `Authorization: Bearer <key>`",
                status=401,
                code="invalid_api_key",
            )
            await _error(send, err, {"WWW-Authenticate": "Bearer"})
            return
        if path == "/" and method == "GET":
            await _respond(send, 200, _json_bytes({"message": "Server is running"}))
        elif path == "/health":
            await self._health(scope, send)
        elif path == "/metrics":
            await self._metrics(scope, send)
        elif path == ADAPTERS and method == "GET":
            await self._adapters(send)
        elif method == "POST" and path in (CHAT, COMPLETIONS):
            await self._generate(scope, receive, send, path)
        elif method == "POST" and path == KAITO_CHAT:
            await self._kaito_chat(scope, receive, send)
        else:
            # vLLM's other routes: its error bodies leave in OpenAI's shape.
            await self.app(scope, receive, _Relay(send, "messages", {}).send)

    # --- hot-load's control routes ------------------------------------------------------------------

    def _controller(self, scope: Scope) -> bool:
        if self._control is None:
            return False
        value = b""
        for name, header in scope.get("headers") or ():
            if name.lower() == CONTROL_HEADER:
                value = header
        return hmac.compare_digest(value, self._control)

    async def _control_call(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """The LoRA routes and the status post, for `kaitopy serve` only; anyone else gets the 404 an
        unknown path gets. The served model list follows what vLLM loaded and unloaded."""
        if scope["method"] != "POST" or not self._controller(scope):
            await _error(send, RequestError(f"Not Found: {scope['method']} {path}", status=404))
            return
        try:
            raw = await _read_body(receive)
            if path == ADAPTER_STATUS:
                json.loads(raw)  # what /adapters will answer must be JSON
                self.adapter_status = raw
                await _respond(send, 204, b"")
                return
            name = validation.parse_body(raw).get("lora_name")
        except (RequestError, ValueError) as exc:
            err = exc if isinstance(exc, RequestError) else RequestError(f"not JSON: {exc}", status=400)
            await _error(send, err)
            return
        if not isinstance(name, str) or not name:
            await _error(send, RequestError("lora_name must be a non-empty string", status=400))
            return
        if path == LORA_UNLOAD and name in self.model_ids[1:]:
            # Out of the list first: no new request picks it while vLLM drops it.
            self.model_ids.remove(name)
        status, body = await self._internal(scope, "POST", path, raw)
        if path == LORA_LOAD and status < 300 and name not in self.model_ids:
            self.model_ids.append(name)
        if status >= 400:
            await _error(send, _client_error(status, body, "lora_name"))
        else:
            await _respond(send, status, body, content_type="text/plain")

    async def _adapters(self, send: Send) -> None:
        """Each adapter's state as hot-load reports it; without hot-load, the served ones as Ready."""
        if self.adapter_status is not None:
            await _respond(send, 200, self.adapter_status)
            return
        served = [{"name": n, "image": "", "state": "Ready", "reason": ""} for n in self.model_ids[1:]]
        await _respond(send, 200, _json_bytes({"observed": "", "adapters": served}))

    def _authorized(self, scope: Scope) -> bool:
        assert self._key is not None
        value = b""
        for name, header in scope.get("headers") or ():
            if name.lower() == b"authorization":
                value = header
        scheme, _, token = value.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)

    # --- calls into vLLM's app in this process (no socket) ---------------------------------------

    async def _internal(self, scope: Scope, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        inner = {
            **scope,
            "method": method,
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if sent:
                await asyncio.Event().wait()  # never disconnects
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        status = 500
        parts: list[bytes] = []

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        await self.app(inner, receive, send)
        return status, b"".join(parts)

    async def _prompt_tokens(self, scope: Scope, body: dict[str, Any]) -> int:
        """The prompt's length as vLLM tokenizes it (its /tokenize applies the chat template)."""
        request: dict[str, Any] = {"model": body.get("model") or self.model_ids[0]}
        if "messages" in body:
            request |= {"messages": body["messages"], "add_generation_prompt": True}
        else:
            prompt = body.get("prompt", "")
            if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
                return len(prompt)
            request["prompt"] = prompt
        status, raw = await self._internal(scope, "POST", "/tokenize", _json_bytes(request))
        if status >= 400:
            raise _client_error(status, raw, "messages" if "messages" in body else "prompt")
        return int(json.loads(raw)["count"])

    # --- plain endpoints ----------------------------------------------------------------------------

    async def _health(self, scope: Scope, send: Send) -> None:
        try:
            status, _ = await self._internal(scope, "GET", "/health")
        except Exception:
            status = 503
        if status == 200:
            await _respond(send, 200, _json_bytes({"status": "Healthy"}))
        else:
            await _respond(send, 503, _json_bytes({"status": "unhealthy"}))

    async def _metrics(self, scope: Scope, send: Send) -> None:
        from kaitopy.inference.vllm_engine import filter_metrics

        body = self.metrics.exposition()
        try:
            status, raw = await self._internal(scope, "GET", "/metrics")
            if status == 200:
                body += filter_metrics(raw)
        except Exception:
            log.exception("vLLM's metrics failed; serving the server's own")
        await _respond(send, 200, body, content_type=CONTENT_TYPE_LATEST)

    # --- generation ---------------------------------------------------------------------------------

    def _deadline(self) -> float | None:
        if not self.config.request_timeout_s:
            return None
        return asyncio.get_running_loop().time() + self.config.request_timeout_s

    def _timed_out(self) -> RequestError:
        return request_timed_out(self.config.request_timeout_s)

    async def _refuse(self, send: Send) -> None:
        self.metrics.rejected.inc()
        err = queue_full(self.admission.max_concurrency, self.admission.max_queue)
        await _error(send, err, {"Retry-After": str(self.config.retry_after_s)})

    async def _with_defaults(self, scope: Scope, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("model") is None:
            body["model"] = self.model_ids[0]
        if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            # vLLM's own default is all the room the context has left; ours is capped, and less when
            # the room is less (no room: one token, and vLLM answers the context error).
            room = self.config.max_model_len - await self._prompt_tokens(scope, body)
            body["max_tokens"] = max(1, min(self.config.default_max_tokens, room))
        return body

    async def _generate(self, scope: Scope, receive: Receive, send: Send, endpoint: str) -> None:
        started = time.monotonic()
        label = "unknown"
        state: dict[str, Any] = {}
        try:
            raw = await _read_body(receive)
            body = validation.parse_body(raw)
            kind = "chat" if endpoint == CHAT else "completion"
            # Checked before admission: a request that cannot succeed gets its 4xx now, never a 429.
            unnamed = body.get("model") is None
            label = validation.check_request(body, kind, self.model_ids, self.limits)
            changed = unnamed or _needs_max_tokens(body)
            body = await self._with_defaults(scope, body)
            stream = body.get("stream") is True
            client_usage = False
            if stream:
                options = body.get("stream_options")
                client_usage = isinstance(options, dict) and bool(options.get("include_usage"))
                if not (isinstance(options, dict) and options.get("include_usage") is True):
                    # Usage is asked for even when the client did not, to count tokens; cut out below.
                    body["stream_options"] = {
                        **(options if isinstance(options, dict) else {}),
                        "include_usage": True,
                    }
                    changed = True
            if changed:
                raw = _json_bytes(body)
                scope["headers"] = [
                    (k, v) for k, v in scope.get("headers") or () if k.lower() != b"content-length"
                ] + [(b"content-length", str(len(raw)).encode())]
            # else: vLLM gets the client's own bytes and headers; nothing to encode again.
            delivered = False

            async def replay() -> Message:
                nonlocal delivered
                if delivered:
                    return await receive()  # the client's disconnect, when it comes
                delivered = True
                return {"type": "http.request", "body": raw, "more_body": False}

            relay = _Relay(send, "messages" if kind == "chat" else "prompt", state)
            if stream:
                relay.on_first = self._series.first_token(endpoint, started)
                relay.on_usage = self._series.usage_events(label, client_usage)
            else:
                relay.collect = []
            try:
                async with asyncio.timeout_at(self._deadline()) as limit, self.admission.slot():
                    await self.app(scope, replay, relay.send)
            except TimeoutError:
                if not limit.expired():
                    raise
                if not state.get("started"):
                    raise self._timed_out() from None
                # Headers are out: the error travels in the stream, as OpenAI's servers do.
                state["status"] = 504
                chunk = b"data: " + _json_bytes(self._timed_out().to_json()) + b"\n\n"
                await send({"type": "http.response.body", "body": chunk, "more_body": False})
            if relay.collect and state.get("status", 200) < 400:
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    self._series.count_usage(label, json.loads(b"".join(relay.collect)).get("usage"))
        except QueueFull:
            state["status"] = 429
            await self._refuse(send)
        except RequestError as err:
            state["status"] = err.status
            await _error(send, err)
        except asyncio.CancelledError:
            state["status"] = 499
            raise
        except Exception:
            log.exception("request to %s failed", endpoint)
            if state.get("started"):
                raise
            state["status"] = 500
            await _error(send, RequestError("internal error while generating", status=500))
        finally:
            self._series.finished(endpoint, label, state.get("status", 500), started)

    async def _kaito_chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.monotonic()
        label = "unknown"
        status = 500
        try:
            payload = validation.parse_body(await _read_body(receive))
            translated = kaito_chat.translate(payload, self.model_ids[0])
            label = validation.check_request(translated.body, translated.kind, self.model_ids, self.limits)
            prompt_tokens = None
            if translated.max_length is not None:
                prompt_tokens = await self._prompt_tokens(scope, translated.body)
            body = kaito_chat.with_prompt_length(translated, prompt_tokens)
            if translated.max_length is not None:
                body["max_tokens"] = min(body["max_tokens"], self.limits.max_tokens_limit)
            body = await self._with_defaults(scope, body)
            path = CHAT if translated.kind == "chat" else COMPLETIONS
            try:
                async with asyncio.timeout_at(self._deadline()) as limit, self.admission.slot():
                    status, raw = await self._internal(scope, "POST", path, _json_bytes(body))
            except TimeoutError:
                if limit.expired():
                    raise self._timed_out() from None
                raise
            if status >= 400:
                raise _client_error(status, raw, "messages" if translated.kind == "chat" else "prompt")
            result = json.loads(raw)
            self._series.count_usage(label, result.get("usage"))
            await _respond(send, 200, _json_bytes(kaito_chat.result(translated, result)))
        except QueueFull:
            status = 429
            await self._refuse(send)
        except RequestError as err:
            status = err.status
            await _error(send, err)
        except asyncio.CancelledError:
            status = 499
            raise
        except Exception:
            log.exception("request to %s failed", KAITO_CHAT)
            status = 500
            await _error(send, RequestError("internal error while generating", status=500))
        finally:
            self._series.finished(KAITO_CHAT, label, status, started)


def _loading_reply(request: bytes) -> bytes:
    target = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b"/"
    if target.split(b"?")[0] == b"/health":
        body = _json_bytes({"status": "loading"})
    else:
        body = _json_bytes(RequestError("the model is still loading; retry later", status=503).to_json())
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nRetry-After: 1\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class _Loading(threading.Thread):
    """Answers every request 503 while the model loads: probes see "loading" at once rather than a
    connection that hangs. A thread, since vLLM's start blocks its event loop for most of the load."""

    def __init__(self, listener: socket.socket) -> None:
        super().__init__(name="kaitopy-loading", daemon=True)
        self._listener = listener
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            ready, _, _ = select.select([self._listener], [], [], 0.2)
            if not ready or self._done.is_set():
                continue
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, OSError):
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    request = conn.recv(65536)
                    conn.sendall(_loading_reply(request))

    def stop(self) -> None:
        self._done.set()
        self.join()
        self._listener.close()


async def _serve(args: Any) -> None:
    """vLLM's single-server start (run_server) with the 503 answerer on its socket while it loads."""
    from vllm.entrypoints.launchers.api_server.entry import build_and_serve, build_async_engine_client
    from vllm.entrypoints.launchers.launcher import setup_server

    def interrupt(*_: object) -> None:
        # SIGTERM while loading ends the start at once (uvicorn installs its own handler later).
        raise KeyboardInterrupt("terminated")

    signal.signal(signal.SIGTERM, interrupt)
    listen_address, sock = setup_server(args, reuse_port=False)
    sock.listen(512)
    # A duplicate of the listening socket: closing the answerer's leaves vLLM's open.
    loading = _Loading(sock.dup())
    loading.start()
    try:
        delay = float(os.environ.get(LOAD_DELAY_ENV, "0") or 0)
        if delay > 0:
            await asyncio.sleep(delay)  # test hook: a load slow enough to watch
        async with build_async_engine_client(args) as engine_client:
            loading.stop()
            shutdown = await build_and_serve(engine_client, listen_address, sock, args)
        await shutdown
    finally:
        if loading.is_alive():
            loading.stop()
        sock.close()


def main() -> None:
    import uvloop
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    cli_env_setup()  # type: ignore[no-untyped-call]
    parser = make_arg_parser(
        FlexibleArgumentParser(description="kaitopy's model server on vLLM")  # type: ignore[no-untyped-call]
    )
    args = parser.parse_args()
    configure_logging_from_args(args)
    validate_parsed_serve_args(args)
    uvloop.run(_serve(args))


if __name__ == "__main__":
    main()
