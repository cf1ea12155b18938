"""The HTTP front of the model server: OpenAI's API, Kaito's classic /chat, /health and /metrics.

It owns everything but generation: parsing, error JSON, admission (429 when the queue is full),
metrics and SSE framing. Whatever goes wrong with a request becomes OpenAI error JSON with a status
that says whose fault it was; only a bug in the server or the engine is a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST

from kaitopy.inference import kaito_chat, validation
from kaitopy.inference.admission import Admission, QueueFull
from kaitopy.inference.engine import (
    Engine,
    EngineResult,
    PromptTokenCounter,
    RequestError,
    queue_full,
    request_timed_out,
)
from kaitopy.inference.metrics import ServerMetrics
from kaitopy.inference.validation import Limits

log = logging.getLogger(__name__)

# Big enough for long conversations; a bigger body is answered 413.
MAX_BODY_BYTES = 32 * 1024 * 1024
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
KAITO_CHAT = "/chat"

# Routes a bearer token guards when one is set; /, /health and /metrics stay open for probes and scrapes.
GUARDED_PREFIXES = ("/v1/", KAITO_CHAT)

Call = Callable[[dict[str, Any]], Awaitable[EngineResult]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _guarded(path: str) -> bool:
    return any(path == p.rstrip("/") or path.startswith(p) for p in GUARDED_PREFIXES)


def bearer_auth(api_key: str) -> Middleware:
    """Middleware: the OpenAI and /chat routes need `Authorization: Bearer <api_key>` (what OpenAI
    clients send as their api_key). Compared in constant time; the token is never logged."""
    expected = api_key.encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _guarded(request.path):
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
                err = RequestError(
                    "missing or wrong API key: send `Authorization: Bearer <key>`",
                    status=401,
                    code="invalid_api_key",
                )
                return error_response(err, headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return check


def error_response(err: RequestError, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(err.to_json(), status=err.status, headers=headers)


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _has_text(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            return True
    return False


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (unknown path, wrong method, body too large) in OpenAI's error shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        err = RequestError(f"{exc.reason}: {request.method} {request.path}", status=exc.status)
        return error_response(err, headers={k: v for k, v in exc.headers.items() if k == "Allow"})


class InferenceServer:
    def __init__(
        self,
        engine: Engine,
        admission: Admission,
        metrics: ServerMetrics,
        *,
        retry_after_s: int = 1,
        max_tokens_limit: int = 4096,
        request_timeout_s: float = 600.0,
        api_key: str | None = None,
    ) -> None:
        self.engine = engine
        self.admission = admission
        self.metrics = metrics
        self.retry_after_s = retry_after_s
        self.limits = Limits(max_tokens_limit=max_tokens_limit)
        self.request_timeout_s = request_timeout_s
        self.api_key = api_key
        self.draining = False
        # Drawn per process: a peer that sees it change knows this server restarted (group.py).
        self.instance = secrets.token_hex(8)
        # Hot-load's per-adapter states (hotload.AdapterManager.snapshot), once the model is loaded.
        self.adapter_status: Callable[[], dict[str, Any]] | None = None

    def app(self) -> web.Application:
        middlewares: list[Middleware] = [_errors_as_json]
        if self.api_key:
            middlewares.append(bearer_auth(self.api_key))
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=middlewares)
        app.router.add_get("/", self._home)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/adapters", self._adapters)
        app.router.add_post(CHAT, self._chat_completions)
        app.router.add_post(COMPLETIONS, self._completions)
        app.router.add_post(KAITO_CHAT, self._kaito_chat)
        return app

    # --- plain endpoints

    async def _home(self, _: web.Request) -> web.Response:
        return web.json_response({"message": "Server is running"})

    async def _health(self, _: web.Request) -> web.Response:
        # The instance id lets a multi-node group's other ranks see that this server restarted.
        if self.draining:
            return web.json_response({"status": "draining", "instance": self.instance}, status=503)
        if not self.engine.ready():
            return web.json_response({"status": "loading", "instance": self.instance}, status=503)
        return web.json_response({"status": "Healthy", "instance": self.instance})

    async def _metrics(self, _: web.Request) -> web.Response:
        body = self.metrics.exposition()
        try:
            extra = self.engine.extra_metrics()
        except Exception:
            log.exception("the engine's extra metrics failed; serving the server's own")
            extra = b""
        if extra:
            body += extra if extra.endswith(b"\n") else extra + b"\n"
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _adapters(self, _: web.Request) -> web.Response:
        """Each adapter's state (Pulling, Loading, Ready, Failed and why), and which delivered list
        they follow ("observed"): what the controller copies into the Workspace's status.adapters."""
        if self.adapter_status is not None:
            return web.json_response(self.adapter_status())
        ids = self.engine.model_ids() if self.engine.ready() else []
        served = [{"name": name, "image": "", "state": "Ready", "reason": ""} for name in ids[1:]]
        return web.json_response({"observed": "", "adapters": served})

    async def _models(self, _: web.Request) -> web.Response:
        if not self.engine.ready():
            return error_response(self._not_ready())
        ids = self.engine.model_ids()
        created = int(time.time())
        data = [
            {
                "id": mid,
                "object": "model",
                "created": created,
                "owned_by": "kaitopy",
                "root": mid,
                "parent": None if i == 0 else ids[0],
            }
            for i, mid in enumerate(ids)
        ]
        return web.json_response({"object": "list", "data": data})

    # --- generation endpoints

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, CHAT, self.engine.chat_completion)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, COMPLETIONS, self.engine.completion)

    def _not_ready(self) -> RequestError:
        if self.draining:
            return RequestError("the server is shutting down", status=503)
        return RequestError("the model is still loading; retry later", status=503)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        return validation.parse_body(await request.read())

    def _deadline(self) -> float | None:
        if not self.request_timeout_s:
            return None
        return asyncio.get_running_loop().time() + self.request_timeout_s

    def _timed_out(self) -> RequestError:
        return request_timed_out(self.request_timeout_s)

    def _refused(self) -> web.Response:
        self.metrics.rejected.inc()
        err = queue_full(self.admission.max_concurrency, self.admission.max_queue)
        return error_response(err, headers={"Retry-After": str(self.retry_after_s)})

    async def _generate(self, request: web.Request, endpoint: str, call: Call) -> web.StreamResponse:
        started = time.monotonic()
        label = "unknown"
        status = 500
        try:
            if self.draining or not self.engine.ready():
                raise self._not_ready()
            body = await self._body(request)
            kind = "chat" if endpoint == CHAT else "completion"
            # Checked before admission: a request that cannot succeed gets its 4xx now, never a 429.
            label = validation.check_request(body, kind, self.engine.model_ids(), self.limits)
            stream = body.get("stream") is True
            client_usage = False
            if stream:
                options = body.get("stream_options")
                client_usage = isinstance(options, dict) and bool(options.get("include_usage"))
                # Ask for usage even when the client did not, to count tokens; stripped again below.
                body["stream_options"] = {
                    **(options if isinstance(options, dict) else {}),
                    "include_usage": True,
                }
            deadline = self._deadline()
            # The slot is held until the response is written, a stream's last chunk included.
            async with contextlib.AsyncExitStack() as held:
                try:
                    async with asyncio.timeout_at(deadline) as scope:
                        await held.enter_async_context(self.admission.slot())
                        result = await call(body)
                except TimeoutError:
                    if scope.expired():
                        raise self._timed_out() from None
                    raise
                if isinstance(result, dict):
                    self.metrics.count_usage(label, result.get("usage"))
                    status = 200
                    return web.json_response(result)
                status, response = await self._stream(
                    request, endpoint, label, result, started, client_usage, deadline
                )
                return response
        except QueueFull:
            status = 429
            return self._refused()
        except RequestError as err:
            status = err.status
            return error_response(err)
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        except Exception:
            log.exception("request to %s failed", endpoint)
            return error_response(RequestError("internal error while generating", status=500))
        finally:
            self.metrics.requests.labels(endpoint, label, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.monotonic() - started)

    async def _stream(
        self,
        request: web.Request,
        endpoint: str,
        label: str,
        chunks: AsyncIterator[dict[str, Any]],
        started: float,
        client_usage: bool,
        deadline: float | None = None,
    ) -> tuple[int, web.StreamResponse]:
        """Write the chunks as SSE. The first chunk is awaited before the headers go out, so an error
        the engine raises lazily still becomes a proper 4xx. Past `deadline` the stream ends with a
        504 error event (the generation is cancelled when the iterator closes)."""
        usage: object = None
        response: web.StreamResponse | None = None

        async def next_chunk() -> dict[str, Any] | None:
            try:
                async with asyncio.timeout_at(deadline) as scope:
                    return await anext(chunks, None)
            except TimeoutError:
                if scope.expired():
                    raise self._timed_out() from None
                raise

        try:
            first = await next_chunk()
            response = web.StreamResponse(
                status=200,
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
            )
            await response.prepare(request)
            first_text_seen = False
            chunk = first
            while chunk is not None:
                if not first_text_seen and _has_text(chunk):
                    first_text_seen = True
                    self.metrics.time_to_first_token.labels(endpoint).observe(time.monotonic() - started)
                if chunk.get("usage"):
                    usage = chunk["usage"]
                    if not client_usage:
                        chunk = {k: v for k, v in chunk.items() if k != "usage"}
                if client_usage or chunk.get("choices"):
                    await response.write(_sse(chunk))
                # Neither a write the socket takes at once nor a chunk already buffered suspends:
                # without this, a long stream whose tokens arrive faster than they are relayed
                # holds the event loop, and every other request (a probe, a 429) waits for its end.
                await asyncio.sleep(0)
                chunk = await next_chunk()
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return 200, response
        except RequestError as err:
            if response is None:
                raise
            # Headers are out: the error travels in the stream, as OpenAI's servers do.
            await response.write(_sse(err.to_json()))
            await response.write_eof()
            return err.status, response
        except ConnectionError:
            log.info("client disconnected from a %s stream; generation cancelled", endpoint)
            return 499, response or web.Response(status=499)
        except Exception:
            if response is None:
                raise
            log.exception("a %s stream failed after its headers were sent", endpoint)
            internal = RequestError("internal error while generating", status=500)
            await response.write(_sse(internal.to_json()))
            await response.write_eof()
            return 500, response
        finally:
            self.metrics.count_usage(label, usage)
            closer = getattr(chunks, "aclose", None)
            if closer is not None:
                await closer()

    async def _kaito_chat(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        label = "unknown"
        status = 500
        try:
            if self.draining or not self.engine.ready():
                raise self._not_ready()
            payload = await self._body(request)
            translated = kaito_chat.translate(payload, self.engine.model_ids()[0])
            label = validation.check_request(
                translated.body, translated.kind, self.engine.model_ids(), self.limits
            )
            prompt_tokens: int | None = None
            if translated.max_length is not None and isinstance(self.engine, PromptTokenCounter):
                prompt_tokens = await self.engine.count_prompt_tokens(translated.body)
            body = kaito_chat.with_prompt_length(translated, prompt_tokens)
            # max_length is an upper bound on prompt plus output: what is left of it is clamped to the
            # server's limit rather than refused (an explicit max_new_tokens over it was refused above).
            if translated.max_length is not None:
                body["max_tokens"] = min(body["max_tokens"], self.limits.max_tokens_limit)
            call = self.engine.chat_completion if translated.kind == "chat" else self.engine.completion
            try:
                async with asyncio.timeout_at(self._deadline()) as scope, self.admission.slot():
                    result = await call(body)
            except TimeoutError:
                if scope.expired():
                    raise self._timed_out() from None
                raise
            if not isinstance(result, dict):
                raise RuntimeError("the engine streamed a response that was not asked to stream")
            self.metrics.count_usage(label, result.get("usage"))
            status = 200
            return web.json_response(kaito_chat.result(translated, result))
        except QueueFull:
            status = 429
            return self._refused()
        except RequestError as err:
            status = err.status
            return error_response(err)
        except asyncio.CancelledError:
            status = 499
            raise
        except Exception:
            log.exception("request to %s failed", KAITO_CHAT)
            return error_response(RequestError("internal error while generating", status=500))
        finally:
            self.metrics.requests.labels(KAITO_CHAT, label, str(status)).inc()
            self.metrics.latency.labels(KAITO_CHAT).observe(time.monotonic() - started)
