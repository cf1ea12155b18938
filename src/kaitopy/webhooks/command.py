"""`kaitopy webhook`: run the validating admission webhook until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from kaitopy.runtime import Client
from kaitopy.webhooks.server import WebhookServer, WebhookSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = WebhookSettings()
    parser.add_argument("--host", default=d.host, help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=d.port, help="port to listen on (default %(default)s)")
    parser.add_argument(
        "--namespace", default=d.namespace, help="the webhook's namespace (certificate Secret, Service)"
    )
    parser.add_argument("--service-name", default=d.service_name, help="the Service the API server calls")
    parser.add_argument("--service-port", type=int, default=d.service_port)
    parser.add_argument(
        "--url", default=None, help="call this URL instead of a Service; {port} is the bound port"
    )
    parser.add_argument("--secret-name", default=d.secret_name, help="Secret holding the serving certificate")
    parser.add_argument(
        "--configuration-name", default=d.configuration_name, help="ValidatingWebhookConfiguration name"
    )
    parser.add_argument("--timeout-seconds", type=int, default=d.timeout_seconds)
    parser.add_argument(
        "--install-webhook-configuration",
        action=argparse.BooleanOptionalAction,
        default=d.manage_configuration,
        help="create/update the whole ValidatingWebhookConfiguration (development); with --no-…, only "
        "write the caBundle of the one the manifests ship",
    )
    parser.add_argument(
        "--only-namespace",
        action="append",
        default=[],
        help="validate only workspaces in this namespace (repeatable; all namespaces when absent)",
    )
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig (in-cluster config when absent)")


def settings_from(args: argparse.Namespace) -> WebhookSettings:
    return WebhookSettings(
        host=args.host,
        port=args.port,
        namespace=args.namespace,
        service_name=args.service_name,
        service_port=args.service_port,
        url=args.url,
        secret_name=args.secret_name,
        configuration_name=args.configuration_name,
        timeout_seconds=args.timeout_seconds,
        manage_configuration=args.install_webhook_configuration,
        namespace_selector=(
            {
                "matchExpressions": [
                    {
                        "key": "kubernetes.io/metadata.name",
                        "operator": "In",
                        "values": list(args.only_namespace),
                    }
                ]
            }
            if args.only_namespace
            else None
        ),
    )


async def serve(args: argparse.Namespace) -> int:
    client = await Client.from_kubeconfig(args.kubeconfig) if args.kubeconfig else await Client.auto()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with client, WebhookServer(client, settings_from(args)) as server:
        print(f"kaitopy webhook listening on {args.host}:{server.port}", flush=True)
        await stop.wait()
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(serve(args))
