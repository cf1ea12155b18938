"""Writing the idle clock: the set's activity Lease (controllers/inferenceset/activity.py) moved
forward on a request's arrival and end, and every interval while requests for the set are held or
in flight (a request held ten minutes for a node is not idleness); at most once per interval per set,
so a busy set costs one write per interval, not one per request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from kaitopy.controllers.inferenceset import activity
from kaitopy.runtime import AlreadyExists, ApiError, Client, NotFound, kinds

log = logging.getLogger(__name__)


class ActivityRecorder:
    def __init__(
        self,
        client: Client,
        operator_namespace: str,
        *,
        interval_s: float = 5.0,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.operator_namespace = operator_namespace
        self.interval_s = interval_s
        self.wall = wall
        self.monotonic = monotonic
        self._written: dict[tuple[str, str], float] = {}
        self._pending: set[tuple[str, str]] = set()
        self._busy: dict[tuple[str, str], int] = {}

    @contextlib.asynccontextmanager
    async def request(self, namespace: str, name: str) -> AsyncIterator[None]:
        """Around one request: touched at arrival and end, and kept fresh while it lasts."""
        key = (namespace, name)
        self._busy[key] = self._busy.get(key, 0) + 1
        try:
            await self.touch(namespace, name)
            yield
        finally:
            self._busy[key] -= 1
            if not self._busy[key]:
                del self._busy[key]
            await self.touch(namespace, name)

    async def touch(self, namespace: str, name: str, *, now: bool = False) -> None:
        """Record activity for the set: written at once when the last write is older than the
        interval (or `now`), else at the next flush."""
        key = (namespace, name)
        last = self._written.get(key)
        if now or last is None or self.monotonic() - last >= self.interval_s:
            await self._write(key)
        else:
            self._pending.add(key)

    async def run(self) -> None:
        """Flush the touches the interval held back, until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            pending, self._pending = self._pending | set(self._busy), set()
            for key in pending:
                await self._write(key)

    async def _write(self, key: tuple[str, str]) -> None:
        namespace, name = key
        self._written[key] = self.monotonic()
        self._pending.discard(key)
        body = activity.lease_body(self.operator_namespace, namespace, name, self.wall())
        try:
            try:
                await self.client.patch(
                    kinds.LEASE,
                    body["metadata"]["name"],
                    {"spec": body["spec"]},
                    namespace=self.operator_namespace,
                )
            except NotFound:
                try:
                    await self.client.create(kinds.LEASE, body)
                except AlreadyExists:
                    await self.client.patch(
                        kinds.LEASE,
                        body["metadata"]["name"],
                        {"spec": body["spec"]},
                        namespace=self.operator_namespace,
                    )
        except ApiError as exc:
            # The clock only delays scale to zero when it lags; serving the request matters more.
            log.warning(
                "cannot record activity", extra={"inferenceset": f"{namespace}/{name}", "error": str(exc)}
            )
