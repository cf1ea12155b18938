"""Model servers simulated for kwok members (kwok pods run nothing): one loopback server that plays
every member, each at /<namespace>/<member>/. A member serves `slots` chat completions at a time,
each taking `service_s`; the rest wait their turn. Its /metrics page says what it is really doing,
in the names kaitopy's model server exports: the requests waiting for a slot
(kaitopy_inference_queue_depth) and those in a slot (kaitopy_inference_running_requests), counted
from the requests in flight, so the autoscaler reads the load the test generates, not a script."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from kaitopy.controllers.inferenceset.autoscale import QUEUE_METRIC, RUNNING_METRIC


@dataclass
class _Member:
    slots: asyncio.Semaphore
    waiting: int = 0
    running: int = 0


@dataclass
class SimulatedMembers:
    slots: int
    service_s: float
    port: int = 0
    answered: Counter[str] = field(default_factory=Counter)
    """Chat completions answered, per member ("<namespace>/<member>")."""
    scraped: Counter[str] = field(default_factory=Counter)
    """/metrics pages served, per member."""
    _members: dict[str, _Member] = field(default_factory=dict)

    def url(self, namespace: str, member: str) -> str:
        return f"http://127.0.0.1:{self.port}/{namespace}/{member}"

    def metrics_url_template(self) -> str:
        """For the controller's --inferenceset-metrics-url."""
        return f"http://127.0.0.1:{self.port}/{{namespace}}/{{member}}/metrics"

    def _member(self, request: web.Request) -> tuple[str, _Member]:
        key = f"{request.match_info['namespace']}/{request.match_info['member']}"
        if key not in self._members:
            self._members[key] = _Member(asyncio.Semaphore(self.slots))
        return key, self._members[key]

    async def chat(self, request: web.Request) -> web.Response:
        key, m = self._member(request)
        body = await request.json()
        m.waiting += 1
        try:
            await m.slots.acquire()
        finally:
            m.waiting -= 1
        m.running += 1
        try:
            await asyncio.sleep(self.service_s)
        finally:
            m.running -= 1
            m.slots.release()
        self.answered[key] += 1
        return web.json_response(
            {
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}],
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        key, m = self._member(request)
        self.scraped[key] += 1
        page = f"{QUEUE_METRIC} {m.waiting}\n{RUNNING_METRIC} {m.running}\n"
        return web.Response(text=page, content_type="text/plain")


@asynccontextmanager
async def simulated_members(slots: int, service_s: float) -> AsyncIterator[SimulatedMembers]:
    sim = SimulatedMembers(slots=slots, service_s=service_s)
    app = web.Application()
    app.router.add_post("/{namespace}/{member}/v1/chat/completions", sim.chat)
    app.router.add_get("/{namespace}/{member}/metrics", sim.metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sim.port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    try:
        yield sim
    finally:
        await runner.cleanup()
