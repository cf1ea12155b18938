"""`kaitopy controller`: the Workspace controller process (and, unless told otherwise, the
admission webhook beside it)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os

from kaitopy import process
from kaitopy.controllers.workspace.plan import Settings
from kaitopy.controllers.workspace.setup import wire
from kaitopy.runtime import Manager

log = logging.getLogger(__name__)
LEASE_NAME = "kaitopy-workspace-controller"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Settings()
    parser.add_argument(
        "--runtime-image",
        default=os.environ.get("KAITOPY_RUNTIME_IMAGE", d.runtime_image),
        help="model server image used when a preset does not name one (env KAITOPY_RUNTIME_IMAGE)",
    )
    parser.add_argument("--tuning-image", default=os.environ.get("KAITOPY_TUNING_IMAGE", d.tuning_image))
    parser.add_argument(
        "--tools-image",
        default=os.environ.get("KAITOPY_TOOLS_IMAGE", d.tools_image),
        help="a static busybox image used to unpack adapter and data images that have no shell",
    )
    parser.add_argument(
        "--node-provisioner",
        choices=("auto", "byo"),
        default=os.environ.get("KAITOPY_NODE_PROVISIONER", d.node_provisioner),
        help="auto: create NodeClaims for missing GPU nodes; byo: only use the user's labelled nodes",
    )
    parser.add_argument("--max-concurrent-reconciles", type=int, default=10, metavar="N")
    parser.add_argument(
        "--resync-period",
        type=float,
        default=36000.0,
        metavar="SECONDS",
        help="reconcile every workspace again this often to heal drift (default 10 h)",
    )
    parser.add_argument(
        "--install-crds",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="create or update the Workspace CRD (and the NodeClaim CRD when absent) at start",
    )
    hook = parser.add_argument_group("admission webhook (served by every replica)")
    hook.add_argument(
        "--webhook",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve the Workspace validating webhook and register it with the API server",
    )
    hook.add_argument("--webhook-port", type=int, default=9443, help="0 picks a free port")
    hook.add_argument(
        "--webhook-url",
        default=os.environ.get("KAITOPY_WEBHOOK_URL"),
        help="URL the API server calls instead of the kaitopy-webhook Service ({port}: the bound port); "
        "for an operator running outside the cluster, e.g. https://127.0.0.1:{port}/validate",
    )
    process.add_process_arguments(parser, component="controller", default_probe_port=8081)


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        runtime_image=args.runtime_image,
        tuning_image=args.tuning_image,
        tools_image=args.tools_image,
        node_provisioner=args.node_provisioner,
    )


def run(args: argparse.Namespace) -> int:
    from kaitopy.api import WORKSPACE
    from kaitopy.controllers.workspace.crds import ensure_workspace_crd
    from kaitopy.controllers.workspace.planner import make_planner
    from kaitopy.presets import Catalog
    from kaitopy.provisioner.install import ensure_crds

    settings = settings_from(args)

    async def main() -> None:
        client = await process.open_client(args)
        async with client, contextlib.AsyncExitStack() as stack:
            if args.install_crds:
                await ensure_workspace_crd(client)
                if settings.node_provisioner == "auto":
                    await ensure_crds(client)
            if args.webhook or args.leader_elect:
                await process.require_namespace(
                    client, args.leader_election_namespace, "webhook certificate and leader lease"
                )
            if args.webhook:
                from kaitopy.webhooks.server import WebhookServer, WebhookSettings

                hook = WebhookSettings(
                    port=args.webhook_port,
                    url=args.webhook_url,
                    namespace=args.leader_election_namespace,
                    service_name=None if args.webhook_url else WebhookSettings.service_name,
                )
                server = await stack.enter_async_context(WebhookServer(client, hook))
                stack.push_async_callback(server.deregister)
                log.info("admission webhook serving", extra={"port": server.port})
            mgr = Manager(client, process.manager_settings(args, LEASE_NAME))
            wire(
                mgr,
                client,
                make_planner(Catalog.load(), settings),
                settings,
                WORKSPACE,
                max_concurrent_reconciles=args.max_concurrent_reconciles,
                resync_period=args.resync_period,
            )
            log.info("workspace controller starting", extra={"node_provisioner": settings.node_provisioner})
            await mgr.run()

    return process.run_process(args, main)
