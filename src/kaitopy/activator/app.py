"""`kaitopy activator`: the proxy process. It watches InferenceSets and Workspaces (its caches),
serves the proxy on --port and /healthz, /readyz, /metrics on the probe address, and keeps the
sets' activity Leases in the operator's namespace. Every replica serves; none is elected."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os

from aiohttp import web

from kaitopy import process
from kaitopy.activator.activity import ActivityRecorder
from kaitopy.activator.admission import HoldSettings
from kaitopy.activator.metrics import ActivatorMetrics
from kaitopy.activator.proxy import Activator, Changes
from kaitopy.api.constants import INFERENCESET, WORKSPACE
from kaitopy.controllers.inferenceset.reconciler import MEMBERS_BY_SET, set_key_of_member
from kaitopy.runtime import Manager

log = logging.getLogger(__name__)
DEFAULT_PORT = 8080
DEFAULT_PROBE_PORT = 8083


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = HoldSettings()
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("KAITOPY_ACTIVATOR_LISTEN_PORT", DEFAULT_PORT)),
        help=f"port of the proxy (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address the proxy listens on")
    parser.add_argument(
        "--max-queue",
        type=int,
        default=d.max_queue,
        metavar="N",
        help=f"requests held per InferenceSet at most while it has no ready member (default {d.max_queue})",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=d.max_wait_s,
        metavar="SECONDS",
        help=f"how long a request is held at most before a 503 (default {d.max_wait_s:g})",
    )
    parser.add_argument(
        "--retry-after",
        type=float,
        default=d.retry_after_s,
        metavar="SECONDS",
        help=f"the Retry-After of the activator's 503s (default {d.retry_after_s:g})",
    )
    parser.add_argument(
        "--connect-retry",
        type=float,
        default=d.connect_retry_s,
        metavar="SECONDS",
        help="how long a ready member that refuses the connection is tried again before a 502 (a "
        f"member just turned Ready can be out of reach for a moment; default {d.connect_retry_s:g})",
    )
    parser.add_argument(
        "--activity-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="a set's activity Lease is written at most this often (default 5; keep it well under "
        "the sets' idle-seconds)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=64 * 1024 * 1024,
        metavar="BYTES",
        help="largest request body accepted (read whole before a set is woken; beyond: 413; default 64 MiB)",
    )
    process.add_process_arguments(
        parser, component="kaitopy-activator", default_probe_port=DEFAULT_PROBE_PORT
    )


def hold_settings(args: argparse.Namespace) -> HoldSettings:
    if args.max_queue < 0:
        raise SystemExit(f"--max-queue {args.max_queue}: must be 0 or more")
    for flag, value in (
        ("--max-wait", args.max_wait),
        ("--retry-after", args.retry_after),
        ("--connect-retry", args.connect_retry),
    ):
        if not value > 0:
            raise SystemExit(f"{flag} {value}: must be a positive number of seconds")
    if args.max_body_bytes < 1:
        raise SystemExit(f"--max-body-bytes {args.max_body_bytes}: must be a positive number of bytes")
    if not args.activity_interval > 0:
        raise SystemExit(
            f"--activity-interval {args.activity_interval}: must be a positive number of seconds"
        )
    return HoldSettings(
        max_queue=args.max_queue,
        max_wait_s=args.max_wait,
        retry_after_s=args.retry_after,
        connect_retry_s=args.connect_retry,
    )


def run(args: argparse.Namespace) -> int:
    settings = hold_settings(args)

    async def main() -> None:
        client = await process.open_client(args)
        async with client, contextlib.AsyncExitStack() as stack:
            # No election: every replica serves requests (the Lease writes are idempotent).
            mgr = Manager(
                client, dataclasses.replace(process.manager_settings(args, "unused"), leader_election=None)
            )
            metrics = ActivatorMetrics(registry=mgr.metrics.registry)
            changes = Changes()
            sets = mgr.cache.informer(INFERENCESET)
            workspaces = mgr.cache.informer(WORKSPACE)
            workspaces.add_indexer(MEMBERS_BY_SET, set_key_of_member)
            sets.add_handler(changes)
            workspaces.add_handler(changes)
            recorder = ActivityRecorder(
                client, args.leader_election_namespace, interval_s=args.activity_interval
            )
            activator = await stack.enter_async_context(
                Activator(
                    client,
                    sets.store,
                    workspaces.store,
                    changes,
                    recorder,
                    settings=settings,
                    metrics=metrics,
                )
            )
            runner = web.AppRunner(activator.app(args.max_body_bytes), access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            await web.TCPSite(runner, args.host, args.port).start()
            flusher = asyncio.create_task(recorder.run(), name="activity leases")
            stack.callback(flusher.cancel)
            log.info("activator serving", extra={"port": args.port, "max_queue": settings.max_queue})
            await mgr.run()

    return process.run_process(args, main)
