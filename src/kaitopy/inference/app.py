"""The model server's life: listen at once (so /health answers 503 while the model loads), load, serve,
and on SIGTERM stop accepting, let in-flight requests finish, and exit 0."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import aiohttp
from aiohttp import web

from kaitopy.inference import adapters as adapter_files
from kaitopy.inference import group
from kaitopy.inference.adapterpull import PullSettings
from kaitopy.inference.admission import Admission
from kaitopy.inference.engine import Engine
from kaitopy.inference.factory import build_engine
from kaitopy.inference.hotload import AdapterEngine, AdapterManager
from kaitopy.inference.metrics import ServerMetrics
from kaitopy.inference.server import InferenceServer
from kaitopy.inference.settings import ServeSettings, SettingsError, watched_peers

log = logging.getLogger(__name__)

# How long SIGTERM waits for in-flight requests; Kubernetes' default grace period is 30 s.
DRAIN_TIMEOUT_S = float(os.environ.get("KAITOPY_DRAIN_TIMEOUT_S", "25"))
# Test hook: hold the load back so a test can watch /health answer 503 first.
LOAD_DELAY_ENV = "KAITOPY_LOAD_DELAY_S"
# A multi-node peer restarted or went silent: this rank exits so its container restarts with the group.
EXIT_GROUP_RESTART = 4


def serve(settings: ServeSettings) -> int:
    code, loading = asyncio.run(_serve(settings))
    if loading:
        # A load thread cannot be interrupted and the interpreter would wait for it at exit.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


async def _load(engine: Engine, after: asyncio.Event | None = None) -> None:
    delay = float(os.environ.get(LOAD_DELAY_ENV, "0") or 0)
    if delay > 0:
        await asyncio.sleep(delay)
    if after is not None:
        log.info("multi-node worker: waiting for the leader's server before joining its group")
        await after.wait()
    await engine.start()


def adapter_manager(settings: ServeSettings, engine: Engine) -> AdapterManager | None:
    """The hot-load loop for a loaded engine, or None when hot-load is off (no --adapter-desired-file)."""
    if settings.adapter_desired_file is None:
        return None
    if not isinstance(engine, AdapterEngine):
        log.warning("the %s engine cannot hot-load adapters; --adapter-desired-file ignored", engine.name)
        return None
    served = set(engine.model_ids()[1:])
    found = {p.resolve().name: p for p in adapter_files.discover(settings.adapter_dir)}
    initial = {
        name: (settings.adapter_images.get(name, ""), settings.adapter_strengths.get(name, 1.0), path)
        for name, path in found.items()
        if name in served
    }
    work = settings.adapter_work_dir or (
        settings.adapter_dir / ".hot" if settings.adapter_dir is not None else Path(tempfile.mkdtemp())
    )
    pull = PullSettings(
        secrets_dir=settings.adapter_pull_secrets_dir,
        plain_http_registries=frozenset(settings.plain_http_registries),
        allow_loopback=settings.allow_loopback_registry,
    )
    return AdapterManager(engine, settings.adapter_desired_file, work, pull, initial)


async def _serve(settings: ServeSettings) -> tuple[int, bool]:
    """(exit code, whether a model load was still running when the server stopped)."""
    try:
        engine = build_engine(settings)
    except SettingsError as exc:
        log.error("cannot start: %s", exc)
        return 2, False
    if getattr(engine, "serves_http", False):
        return await _supervise(engine, settings)
    metrics = ServerMetrics()

    def on_change(waiting: int, running: int) -> None:
        metrics.queue_depth.set(waiting)
        metrics.running.set(running)

    admission = Admission(settings.max_concurrency, settings.max_queue, on_change)
    server = InferenceServer(
        engine,
        admission,
        metrics,
        max_tokens_limit=settings.max_tokens_limit,
        request_timeout_s=settings.request_timeout_s,
        api_key=settings.api_key,
    )
    runner = web.AppRunner(
        server.app(), handler_cancellation=True, shutdown_timeout=DRAIN_TIMEOUT_S, access_log=None
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
        await runner.cleanup()
        return 1, False
    log.info(
        "listening on %s:%d; loading %s with the %s engine; %s",
        settings.host,
        settings.port,
        settings.model_dir,
        engine.name,
        _limits(settings),
    )

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    code = 0
    group_restart: list[str] = []

    def restart_group(reason: str) -> None:
        group_restart.append(reason)
        stopping.set()

    # Multi-node: watched from the start, not once loaded. The leader judges its workers once it
    # serves; a worker joins the rendezvous only after it has seen the leader instance it watches.
    peers = watched_peers(settings.group_peers, settings.node_rank)
    watch: asyncio.Task[None] | None = None
    first: asyncio.Event | None = None
    if peers:
        leads = settings.node_rank == 0
        group_watch = group.GroupWatch(peers, restart_group, armed=engine.ready if leads else lambda: True)
        watch = asyncio.create_task(group_watch.run())
        first = None if leads else group_watch.seen_all
    load = asyncio.create_task(_load(engine, first))
    hot: asyncio.Task[None] | None = None
    stop_wait = asyncio.create_task(stopping.wait())
    try:
        started = await _started(load, stop_wait, engine)
        if started is False:
            code = 1
        elif started:
            manager = adapter_manager(settings, engine)
            if manager is not None:
                server.adapter_status = manager.snapshot
                hot = asyncio.create_task(manager.run())
                log.info("hot-load: following %s", settings.adapter_desired_file)
            await stop_wait
        if group_restart:
            code = EXIT_GROUP_RESTART
        log.info("stopping: no new requests; waiting up to %.0f s for those in flight", DRAIN_TIMEOUT_S)
    finally:
        server.draining = True
        still_loading = not load.done()
        load.cancel()
        stop_wait.cancel()
        if watch is not None:
            watch.cancel()
        if hot is not None:
            hot.cancel()
        await runner.cleanup()
        with contextlib.suppress(Exception):
            await engine.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return code, still_loading


async def _supervise(engine: Engine, settings: ServeSettings) -> tuple[int, bool]:
    """The engine's child serves HTTP itself (vLLM with kaitopy's routes inside): this process only
    starts it, stops it (and its process group) on SIGTERM, and exits non-zero when it dies."""
    log.info(
        "loading %s with the %s engine; it serves %s:%d itself; %s",
        settings.model_dir,
        engine.name,
        settings.host,
        settings.port,
        _limits(settings),
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    # The load delay test hook is the child's: it answers 503 while it waits.
    load = asyncio.create_task(engine.start())
    stop_wait = asyncio.create_task(stopping.wait())
    hot: list[asyncio.Task[None]] = []
    code = 0
    try:
        started = await _started(load, stop_wait, engine)
        if started is False:
            code = 1
        elif started:
            manager = adapter_manager(settings, engine)
            if manager is not None and isinstance(engine, StatusSink):
                hot = [
                    asyncio.create_task(manager.run()),
                    asyncio.create_task(_publish_status(manager, engine)),
                ]
                log.info("hot-load: following %s", settings.adapter_desired_file)
            await stop_wait
        log.info("stopping: the engine finishes the requests in flight, then exits")
    finally:
        load.cancel()
        stop_wait.cancel()
        for task in hot:
            task.cancel()
        with contextlib.suppress(Exception):
            await engine.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return code, False


def _limits(settings: ServeSettings) -> str:
    """What a client meets, for the start-up line: the API key, max_tokens, the request timeout."""
    key = "required" if settings.api_key else "not set (the API is open)"
    timeout = f"{settings.request_timeout_s:g} s" if settings.request_timeout_s else "none"
    return (
        f"API key {key}; max_tokens default {settings.default_max_tokens}, "
        f"limit {settings.max_tokens_limit}; request timeout {timeout}"
    )


async def _started(load: asyncio.Task[None], stop_wait: asyncio.Task[Any], engine: Engine) -> bool | None:
    """Wait for the engine's start or a stop signal, whichever comes first, and say which: True
    started (logged ready), False failed (logged), None stopped first."""
    await asyncio.wait({load, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    if not load.done():
        return None
    failure = load.exception()
    if failure is not None:
        # A setting the operator got wrong needs its one line, not a traceback.
        trace = None if isinstance(failure, SettingsError) else failure
        log.error("cannot start: %s", failure, exc_info=trace)
        return False
    log.info(
        "ready: serving %s", ", ".join(engine.model_ids()) or "no model (a multi-node worker runs its stage)"
    )
    return True


@runtime_checkable
class StatusSink(Protocol):
    """An engine whose child answers GET /adapters itself (one-hop vLLM)."""

    async def publish_adapter_status(self, status: dict[str, Any]) -> None: ...


async def _publish_status(manager: AdapterManager, sink: StatusSink, every_s: float = 0.1) -> None:
    """Hand hot-load's states to the server that answers GET /adapters whenever they change; the
    states are this process's, the server is the vLLM child."""
    sent: dict[str, Any] | None = None
    failing = False
    while True:
        status = manager.snapshot()
        if status != sent:
            try:
                await sink.publish_adapter_status(status)
            except (aiohttp.ClientError, OSError, RuntimeError) as exc:
                if not failing:
                    log.warning("cannot hand the adapter states to the server (retrying): %s", exc)
                failing = True
            else:
                sent, failing = status, False
        await asyncio.sleep(every_s)
