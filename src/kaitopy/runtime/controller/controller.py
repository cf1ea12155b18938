"""A controller: cache events -> work queue -> N workers running `reconcile(request)`.

Errors requeue through the rate limiter (never sooner than an API error's `Retry-After`);
`TerminalError` does not; `Result.requeue_after` requeues after a delay. A reconcile that runs past
`reconcile_timeout` is cancelled and counts as an error. A request is never reconciled by two
workers at once (the queue guarantees it).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

from kaitopy.runtime.cache.informer import Informer
from kaitopy.runtime.controller.reconcile import ReconcileContext, Reconciler, Request, Result, _current
from kaitopy.runtime.controller.workqueue import ShutDown, WorkQueue
from kaitopy.runtime.errors import ApiError, TerminalError
from kaitopy.runtime.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControllerSettings:
    """Tunables of one controller."""

    max_concurrent_reconciles: int = 1
    """Workers; different objects reconcile in parallel, one object never does."""
    resync_period: float | None = 36000.0
    """Reconcile every object again this often (10 h, controller-runtime's default) to heal drift."""
    resync_jitter: float = 0.1
    """Resync waits period x (1 + up to this fraction), so controllers do not resync together."""
    cache_sync_timeout: float = 120.0
    """Give up starting if the caches have not synced by then: a missing RBAC rule, usually."""
    reconcile_timeout: float | None = 600.0
    """Cancel a reconcile running longer (an error, retried with backoff), so one hung call cannot
    hold a worker for ever; generous, since a reconcile may wait on a cloud API. None: no limit."""


class Controller:
    """Runs `reconcile` for requests from `queue`; built by `ControllerBuilder`, run by `Manager`."""

    def __init__(
        self,
        name: str,
        reconcile: Reconciler,
        *,
        queue: WorkQueue[Request],
        informers: list[Informer],
        primary: Informer | None = None,
        settings: ControllerSettings | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = name
        self.reconcile = reconcile
        self.queue = queue
        self.informers = informers
        self.primary = primary
        self.settings = settings or ControllerSettings()
        self.metrics = metrics or Metrics()
        self._active = self.metrics.active_workers.labels(name)
        self._started = asyncio.Event()

    @property
    def has_synced(self) -> bool:
        return all(inf.has_synced for inf in self.informers)

    async def run(self) -> None:
        """Wait for the caches, then reconcile until cancelled or `shutdown()`; drains on the way out."""
        await asyncio.wait_for(
            asyncio.gather(*(i.wait_synced() for i in self.informers)), self.settings.cache_sync_timeout
        )
        n = self.settings.max_concurrent_reconciles
        self.metrics.max_concurrent_reconciles.labels(self.name).set(n)
        log.info("starting workers", extra={"controller": self.name, "workers": n})
        self._started.set()
        async with asyncio.TaskGroup() as tg:
            for i in range(n):
                tg.create_task(self._worker(), name=f"{self.name} worker {i}")
            if self.settings.resync_period and self.primary is not None:
                tg.create_task(self._resync(self.settings.resync_period))

    async def shutdown(self, drain_timeout: float) -> bool:
        """Stop taking work and wait up to `drain_timeout` s for reconciles in flight. True if drained."""
        try:
            await asyncio.wait_for(self.queue.shutdown_with_drain(), drain_timeout)
            return True
        except TimeoutError:
            log.warning("reconciles still running at shutdown", extra={"controller": self.name})
            return False

    def requeue_all(self) -> int:
        """Enqueue every object of the primary kind (what the periodic resync does); returns how many."""
        if self.primary is None:
            return 0
        keys = self.primary.store.keys()
        for key in keys:
            ns, _, name = key.rpartition("/")
            self.queue.add(Request(ns, name))
        return len(keys)

    async def _resync(self, period: float) -> None:
        while not self.queue.shutting_down:
            await asyncio.sleep(period * (1 + random.random() * self.settings.resync_jitter))
            self.requeue_all()

    async def _worker(self) -> None:
        while True:
            try:
                req = await self.queue.get()
            except ShutDown:
                return
            try:
                await self._process(req)
            finally:
                self.queue.done(req)
            # A reconcile that finds nothing to write never awaits anything, and get() does not
            # suspend while items are queued: without this, a resync of a thousand objects holds
            # the event loop for seconds, starving watches, probes and the other workers.
            await asyncio.sleep(0)

    async def _process(self, req: Request) -> None:
        # 48 random bits, as uuid4().hex[:12] gave, without uuid4's getrandom() system call per
        # reconcile: the id only tells one reconcile's log lines from another's.
        ctx = ReconcileContext(self.name, req, f"{random.getrandbits(48):012x}")
        token = _current.set(ctx)
        extra = {"controller": self.name, "object": req.key, "reconcile_id": ctx.reconcile_id}
        self._active.inc()
        start = time.perf_counter()
        outcome = "success"
        try:
            async with asyncio.timeout(self.settings.reconcile_timeout):
                result = await self.reconcile(req) or Result()
        except TerminalError as exc:
            outcome = "error"
            self.metrics.reconcile_errors_total.labels(self.name).inc()
            self.metrics.terminal_reconcile_errors_total.labels(self.name).inc()
            log.error("reconcile failed terminally, not retrying", extra={**extra, "error": str(exc)})
            self.queue.forget(req)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            outcome = "error"
            self.metrics.reconcile_errors_total.labels(self.name).inc()
            log.warning(
                "reconcile timed out, retrying",
                extra={**extra, "timeout_s": self.settings.reconcile_timeout},
            )
            self.queue.add_rate_limited(req)
        except Exception as exc:
            outcome = "error"
            self.metrics.reconcile_errors_total.labels(self.name).inc()
            # 429/503 carry the server's own hint; retrying sooner only adds to its load.
            retry_after = exc.retry_after if isinstance(exc, ApiError) else None
            log.warning(
                "reconcile failed, retrying",
                exc_info=not isinstance(exc, ApiError),
                extra={
                    **extra,
                    "error": str(exc),
                    "retries": self.queue.num_requeues(req),
                    "retry_after_s": retry_after,
                },
            )
            self.queue.add_rate_limited(req, at_least=retry_after or 0.0)
        else:
            if result.requeue_after and result.requeue_after > 0:
                outcome = "requeue_after"
                self.queue.forget(req)
                self.queue.add_after(req, result.requeue_after)
            elif result.requeue:
                outcome = "requeue"
                self.queue.add_rate_limited(req)
            else:
                self.queue.forget(req)
        finally:
            self._active.dec()
            self.metrics.reconcile_time_seconds.labels(self.name).observe(time.perf_counter() - start)
            _current.reset(token)
        self.metrics.reconcile_total.labels(self.name, outcome).inc()
