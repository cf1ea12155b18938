"""The manager: shared caches, controllers, leader election, probes, and a graceful shutdown.

`await manager.run()` returns normally after SIGTERM/SIGINT (or `stop()`) once in-flight reconciles
drained, and raises `LeadershipLost` if the lease was lost: the process must then exit non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from kaitopy.runtime.cache.informer import InformerCache, InformerSettings
from kaitopy.runtime.client import Client
from kaitopy.runtime.controller.builder import ControllerBuilder
from kaitopy.runtime.controller.controller import Controller
from kaitopy.runtime.errors import LeadershipLost
from kaitopy.runtime.manager.health import HealthServer
from kaitopy.runtime.manager.leaderelection import LeaderElectionSettings, LeaderElector
from kaitopy.runtime.manager.looplag import LoopLagMonitor

log = logging.getLogger(__name__)

Runnable = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class ManagerSettings:
    """Process-wide tunables."""

    leader_election: LeaderElectionSettings | None = None
    """None: no election (single replica, tests). Set it when running more than one replica."""
    probe_host: str = "0.0.0.0"
    probe_port: int | None = 8081
    """Port of /healthz, /readyz and /metrics; None disables the server, 0 picks a free port."""
    graceful_shutdown_timeout: float = 30.0
    """How long reconciles in flight may take to finish after SIGTERM (pods get 30 s by default)."""
    shutdown_hook_timeout: float = 5.0
    """Each shutdown hook's bound, after the drain (add_shutdown_hook)."""
    handle_signals: bool = True
    """Install SIGTERM/SIGINT handlers that call stop()."""
    informer: InformerSettings | None = None
    namespaces: tuple[str, ...] | None = None
    """Watch namespaced kinds in these namespaces only (None: all); see `InformerCache`."""


class Manager:
    """Owns the client's metrics, one `InformerCache`, the controllers and the extra runnables."""

    def __init__(self, client: Client, settings: ManagerSettings | None = None) -> None:
        self.client = client
        self.settings = settings or ManagerSettings()
        self.metrics = client.metrics
        self.cache = InformerCache(client, self.settings.informer, self.settings.namespaces)
        self.controllers: list[Controller] = []
        self._runnables: list[Runnable] = []
        self._shutdown_hooks: list[Runnable] = []
        self._stop = asyncio.Event()
        self.health: HealthServer | None = None
        self.elector: LeaderElector | None = None
        self._running = asyncio.Event()

    def controller(self, name: str) -> ControllerBuilder:
        """Start declaring a controller; `build()` registers it with this manager."""
        return ControllerBuilder(name, self.cache, self.metrics, on_build=self.controllers.append)

    def add_runnable(self, runnable: Runnable) -> None:
        """Extra work that runs (as the controllers) only while leader, cancelled on shutdown."""
        self._runnables.append(runnable)

    def add_shutdown_hook(self, hook: Runnable) -> None:
        """Work for the end of a graceful stop: after the reconciles in flight drained, before
        leadership is released (an event recorder writes the repeat counts it still holds)."""
        self._shutdown_hooks.append(hook)

    def stop(self) -> None:
        """Ask for a graceful shutdown (what SIGTERM does)."""
        self._stop.set()

    def ready(self) -> bool:
        return self.cache.has_synced

    async def wait_running(self) -> None:
        """Until the controllers were started (after leadership and cache sync)."""
        await self._running.wait()

    async def run(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        if s.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        if s.probe_port is not None:
            self.health = HealthServer(self.metrics, self.ready, s.probe_host, s.probe_port)
            await self.health.start()
        lag = asyncio.create_task(LoopLagMonitor(self.metrics).run(), name="event loop lag")
        self.cache.start()
        lost: LeadershipLost | None = None
        try:
            if s.leader_election is not None:
                self.elector = LeaderElector(self.client, s.leader_election, metrics=self.metrics)
                acquired = asyncio.create_task(self.elector.acquire())
                stop_wait = asyncio.create_task(self._stop.wait())
                await asyncio.wait({acquired, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                stop_wait.cancel()
                if not acquired.done():
                    acquired.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await acquired
                    return
                acquired.result()
            lost = await self._run_leading()
            if lost is None:
                await self._run_shutdown_hooks()
        finally:
            if (
                self.elector is not None
                and lost is None
                and s.leader_election
                and s.leader_election.release_on_cancel
            ):
                await self.elector.release()
            lag.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag
            await self.cache.stop()
            if self.health is not None:
                await self.health.stop()
            if s.handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        if lost is not None:
            raise lost

    async def _run_shutdown_hooks(self) -> None:
        """Each hook gets a bounded time (an API server that went away must not hold the exit)."""
        for hook in self._shutdown_hooks:
            try:
                await asyncio.wait_for(hook(), self.settings.shutdown_hook_timeout)
            except Exception as exc:  # best effort: the process is exiting anyway
                log.warning(
                    "shutdown hook failed",
                    extra={"hook": getattr(hook, "__qualname__", repr(hook)), "error": repr(exc)},
                )

    async def _run_leading(self) -> LeadershipLost | None:
        work: list[asyncio.Task[Any]] = [
            asyncio.create_task(c.run(), name=f"controller {c.name}") for c in self.controllers
        ]
        work += [asyncio.create_task(r()) for r in self._runnables]
        stop = asyncio.create_task(self._stop.wait(), name="stop signal")
        renewal: asyncio.Task[None] | None = None
        if self.elector is not None:
            renewal = asyncio.create_task(self.elector.hold(), name="lease renewal")
        watchers: list[asyncio.Task[Any]] = [stop] if renewal is None else [stop, renewal]
        self._running.set()
        lost: LeadershipLost | None = None
        try:
            done, _ = await asyncio.wait([*work, *watchers], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                exc = t.exception()
                if isinstance(exc, LeadershipLost):
                    lost = exc
                    log.error("leadership lost: stopping all reconciles now")
                elif exc is not None:
                    log.error("a controller failed; shutting down", exc_info=exc)
                    raise exc
        finally:
            stop.cancel()
            if lost is None:
                # Graceful: stop handing out work, let reconciles in flight finish (bounded). The
                # lease is renewed all through the drain (as controller-runtime does), so no other
                # replica takes over while our reconciles still write; if it is lost meanwhile,
                # the drain ends at once.
                drains = asyncio.ensure_future(
                    asyncio.gather(
                        *(c.shutdown(self.settings.graceful_shutdown_timeout) for c in self.controllers)
                    )
                )
                pending: set[asyncio.Future[Any]] = {drains}
                if renewal is not None and not renewal.done():
                    pending.add(renewal)
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if renewal is not None and renewal.done() and not renewal.cancelled():
                    exc = renewal.exception()
                    if isinstance(exc, LeadershipLost):
                        lost = exc
                        log.error("leadership lost while draining: stopping all reconciles now")
                drains.cancel()
                await asyncio.gather(drains, return_exceptions=True)
            if renewal is not None:
                renewal.cancel()
            for t in work:
                t.cancel()
            await asyncio.gather(*work, *watchers, return_exceptions=True)
        return lost
