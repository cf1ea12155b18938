"""The activator in the test's process, on loopback, over real API server caches; and a small
model-like server standing in for the members' model servers (OpenAI chat, streaming too)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kaitopy.activator.activity import ActivityRecorder
from kaitopy.activator.admission import HoldSettings
from kaitopy.activator.metrics import ActivatorMetrics
from kaitopy.activator.proxy import Activator, Changes
from kaitopy.api.constants import INFERENCESET, WORKSPACE
from kaitopy.controllers.inferenceset.reconciler import MEMBERS_BY_SET, set_key_of_member
from kaitopy.runtime import Client, InformerCache


async def _site(app: web.Application, port: int = 0) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner, int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


@dataclass
class ModelServer:
    port: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)
    """Each request's path and body, in order."""

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def model_server(port: int = 0) -> AsyncIterator[ModelServer]:
    """POST /v1/chat/completions answers "hello" (as server-sent events with "stream": true), on
    `port` (0: a free one)."""
    server = ModelServer()

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        server.seen.append({"path": request.path_qs, "body": body})
        if not body.get("stream"):
            return web.json_response(
                {"object": "chat.completion", "choices": [{"message": {"content": "hello"}}]}
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for word in ("hel", "lo"):
            chunk = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": word}}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(0.05)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner, server.port = await _site(app, port)
    try:
        yield server
    finally:
        await runner.cleanup()


@dataclass
class RunningActivator:
    url: str
    activator: Activator
    metrics: ActivatorMetrics

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@asynccontextmanager
async def running_activator(
    client: Client,
    operator_namespace: str,
    endpoint_of: Callable[[str, str], str],
    settings: HoldSettings,
    activity_interval_s: float = 0.5,
    max_body_bytes: int = 1024 * 1024,
) -> AsyncIterator[RunningActivator]:
    """The activator as `kaitopy activator` wires it (its caches, event handlers, activity Leases),
    serving on 127.0.0.1."""
    cache = InformerCache(client)
    sets = cache.informer(INFERENCESET)
    workspaces = cache.informer(WORKSPACE)
    workspaces.add_indexer(MEMBERS_BY_SET, set_key_of_member)
    changes = Changes()
    sets.add_handler(changes)
    workspaces.add_handler(changes)
    cache.start()
    await cache.wait_synced()
    recorder = ActivityRecorder(client, operator_namespace, interval_s=activity_interval_s)
    flusher = asyncio.create_task(recorder.run())
    metrics = ActivatorMetrics()
    try:
        async with Activator(
            client,
            sets.store,
            workspaces.store,
            changes,
            recorder,
            settings=settings,
            metrics=metrics,
            endpoint_of=endpoint_of,
        ) as activator:
            runner, port = await _site(activator.app(max_body_bytes))
            try:
                yield RunningActivator(f"http://127.0.0.1:{port}", activator, metrics)
            finally:
                await runner.cleanup()
    finally:
        flusher.cancel()
        await cache.stop()
