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


class KaitoFront:
    """ASGI middleware around vLLM's FastAPI app (vLLM adds it for `--middleware`)."""

    def __init__(self, app: ASGIApp, config: FrontConfig | None = None) -> None:
        self.app = app
        self.config = config or FrontConfig.from_env()
        self.metrics = ServerMetrics()
        self.limits = Limits(max_tokens_limit=self.config.max_tokens_limit)

        def on_change(waiting: int, running: int) -> None:
            self.metrics.queue_depth.set(waiting)
            self.metrics.running.set(running)

        self.admission = Admission(self.config.max_concurrency, self.config.max_queue, on_change)
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
            await self.app(scope, receive, self._mapped_errors(send, "messages"))

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

    def _mapped_errors(
        self,
        send: Send,
        input_param: str,
        on_body: Callable[[bytes, bool], bytes] | None = None,
        state: dict[str, Any] | None = None,
    ) -> Send:
        """`send`, with an error response's body rewritten into OpenAI's shape; a success's body parts
        pass through `on_body(part, last)`, which may count and trim them."""
        box: dict[str, Any] = state if state is not None else {}
        buffered: list[bytes] = []

        async def wrapped(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                box["status"] = int(message["status"])
                if box["status"] < 400:
                    box["started"] = True
                    await send(message)
                return
            if kind != "http.response.body" or box.get("status", 200) < 400:
                if on_body is not None and kind == "http.response.body":
                    body = on_body(message.get("body", b""), not message.get("more_body"))
                    message = {**message, "body": body}
                await send(message)
                return
            buffered.append(message.get("body", b""))
            if message.get("more_body"):
                return
            err = _client_error(box["status"], b"".join(buffered), input_param)
            box["started"] = True
            await _error(send, err)

        return wrapped

    def _stream_counter(
        self, endpoint: str, label: str, started: float, client_usage: bool
    ) -> Callable[[bytes, bool], bytes]:
        """Per SSE body part: the first token's time, and the usage event (the last before [DONE]),
        counted and cut out when the client did not ask for it. Other parts pass untouched: a byte
        search, no parsing, on the path every token takes."""
        seen_first = False

        def on_body(part: bytes, last: bool) -> bytes:
            nonlocal seen_first
            if not seen_first and part:
                seen_first = True
                self.metrics.time_to_first_token.labels(endpoint).observe(time.monotonic() - started)
            if _USAGE not in part:
                return part
            kept: list[bytes] = []
            for event in part.split(b"\n\n"):
                if _USAGE in event and event.startswith(b"data: "):
                    with contextlib.suppress(ValueError, TypeError):
                        chunk = json.loads(event[6:])
                        # The final usage event has no choices; with continuous_usage_stats the
                        # others carry running totals, which must not be counted again.
                        if not chunk.get("choices"):
                            self.metrics.count_usage(label, chunk.get("usage"))
                            if not client_usage:
                                continue
                kept.append(event)
            return b"\n\n".join(kept)

        return on_body

    def _json_counter(self, label: str) -> Callable[[bytes, bool], bytes]:
        parts: list[bytes] = []

        def on_body(part: bytes, last: bool) -> bytes:
            parts.append(part)
            if last:
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    self.metrics.count_usage(label, json.loads(b"".join(parts)).get("usage"))
            return part

        return on_body

    async def _generate(self, scope: Scope, receive: Receive, send: Send, endpoint: str) -> None:
        started = time.monotonic()
        label = "unknown"
        state: dict[str, Any] = {}
        try:
            body = validation.parse_body(await _read_body(receive))
            kind = "chat" if endpoint == CHAT else "completion"
            # Checked before admission: a request that cannot succeed gets its 4xx now, never a 429.
            label = validation.check_request(body, kind, self.model_ids, self.limits)
            body = await self._with_defaults(scope, body)
            client_usage = False
            if body.get("stream") is True:
                options = body.get("stream_options")
                client_usage = isinstance(options, dict) and bool(options.get("include_usage"))
                # Usage is asked for even when the client did not, to count tokens; cut out again below.
                body["stream_options"] = {
                    **(options if isinstance(options, dict) else {}),
                    "include_usage": True,
                }
            raw = _json_bytes(body)
            scope["headers"] = [
                (k, v) for k, v in scope.get("headers") or () if k.lower() != b"content-length"
            ] + [(b"content-length", str(len(raw)).encode())]
            delivered = False

            async def replay() -> Message:
                nonlocal delivered
                if delivered:
                    return await receive()  # the client's disconnect, when it comes
                delivered = True
                return {"type": "http.request", "body": raw, "more_body": False}

            stream = body.get("stream") is True
            on_body = self._stream_counter(endpoint, label, started, client_usage) if stream else None
            if not stream:
                on_body = self._json_counter(label)
            mapped = self._mapped_errors(send, "messages" if kind == "chat" else "prompt", on_body, state)
            try:
                async with asyncio.timeout_at(self._deadline()) as limit, self.admission.slot():
                    await self.app(scope, replay, mapped)
            except TimeoutError:
                if not limit.expired():
                    raise
                if not state.get("started"):
                    raise self._timed_out() from None
                # Headers are out: the error travels in the stream, as OpenAI's servers do.
                state["status"] = 504
                chunk = b"data: " + _json_bytes(self._timed_out().to_json()) + b"\n\n"
                await send({"type": "http.response.body", "body": chunk, "more_body": False})
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
            self.metrics.requests.labels(endpoint, label, str(state.get("status", 500))).inc()
            self.metrics.latency.labels(endpoint).observe(time.monotonic() - started)

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
            self.metrics.count_usage(label, result.get("usage"))
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
            self.metrics.requests.labels(KAITO_CHAT, label, str(status)).inc()
            self.metrics.latency.labels(KAITO_CHAT).observe(time.monotonic() - started)


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
