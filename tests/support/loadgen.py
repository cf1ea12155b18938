"""A bounded load generator for the model servers (loopback and the project's own networks only):
`concurrency` clients each send one chat completion after another, round robin over the targets a
callable gives at each request (so a member that becomes ready joins), until stopped, `max_requests`
were sent, or `deadline_s` passed. Every request's outcome is kept: a status code, or the error
that stopped it (nothing is retried, so a lost request shows)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)
    by_target: Counter[str] = field(default_factory=Counter)
    """Answered (any status) per target."""
    errors: list[str] = field(default_factory=list)
    """Requests that got no HTTP answer at all (connection refused or reset, timeout)."""
    latencies: list[float] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + len(self.errors)


class Load:
    def __init__(
        self,
        targets: Callable[[], Sequence[str]],
        body: dict[str, Any],
        *,
        concurrency: int,
        max_requests: int,
        deadline_s: float,
        request_timeout_s: float = 300.0,
    ) -> None:
        self.targets = targets
        self.body = body
        self.concurrency = concurrency
        self.max_requests = max_requests
        self.deadline_s = deadline_s
        self.request_timeout_s = request_timeout_s
        self.result = LoadResult()
        self.stop = asyncio.Event()
        self._tickets = itertools.count()
        self._rr = itertools.count()

    def _next_target(self) -> str | None:
        found = list(self.targets())
        return found[next(self._rr) % len(found)] if found else None

    async def _client(self, session: aiohttp.ClientSession, end: float) -> None:
        while not self.stop.is_set() and time.monotonic() < end:
            if next(self._tickets) >= self.max_requests:
                return
            target = self._next_target()
            if target is None:
                await asyncio.sleep(0.5)
                continue
            started = time.monotonic()
            try:
                async with session.post(
                    f"{target}/v1/chat/completions",
                    json=self.body,
                    timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
                ) as resp:
                    await resp.read()
                    self.result.statuses[resp.status] += 1
                    self.result.by_target[target] += 1
            except (aiohttp.ClientError, TimeoutError) as err:
                self.result.errors.append(f"{target}: {err!r}")
                continue
            self.result.latencies.append(time.monotonic() - started)

    async def run(self) -> LoadResult:
        end = time.monotonic() + self.deadline_s
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(self._client(session, end) for _ in range(self.concurrency)))
        return self.result
