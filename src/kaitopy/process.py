"""What every long-running kaitopy process shares: the flags for the API connection, leader
election, probes and logging, and a runner that turns the manager's outcome into an exit code."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable

from kaitopy import logconfig
from kaitopy.runtime import Client, ClientSettings, LeaderElectionSettings, LeadershipLost, ManagerSettings

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The process cannot start as configured; the message says what to set."""


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


def add_process_arguments(
    parser: argparse.ArgumentParser, *, component: str, default_probe_port: int
) -> None:
    g = parser.add_argument_group("process")
    g.add_argument(
        "--kubeconfig",
        default=os.environ.get("KUBECONFIG"),
        help="kubeconfig to use (default: in-cluster service account, else $KUBECONFIG/~/.kube/config)",
    )
    g.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=_env_bool("KAITOPY_LEADER_ELECT", False),
        help="hold a coordination.k8s.io Lease before reconciling (on when running several replicas)",
    )
    g.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("POD_NAMESPACE", "kaito-system"),
        help="namespace of the Lease (default: $POD_NAMESPACE or kaito-system)",
    )
    g.add_argument(
        "--probe-address",
        default=os.environ.get("KAITOPY_PROBE_ADDRESS", f"0.0.0.0:{default_probe_port}"),
        help="host:port of /healthz, /readyz and /metrics; port 0 picks a free one; 'off' disables",
    )
    g.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("KAITOPY_LOG_FORMAT", "text"),
    )
    g.add_argument("--log-level", default=os.environ.get("KAITOPY_LOG_LEVEL", "INFO"))
    # One identity per process: the Lease holder and the User-Agent of every request, so the API
    # server's audit log tells two replicas apart (and can prove only the leader writes).
    parser.set_defaults(component=component, identity=f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}")


async def require_namespace(client: Client, namespace: str, what: str) -> None:
    """Fail at start-up, with the fix, when the operator's own namespace is missing: otherwise the
    first write there fails deep inside a component with a bare 404."""
    from kaitopy.runtime import Forbidden, NotFound, kinds

    try:
        await client.get(kinds.NAMESPACE, namespace)
    except Forbidden:
        # The shipped RBAC does not grant reading namespaces: a process running under it runs in
        # a pod, inside the namespace it would check.
        return
    except NotFound:
        raise StartupError(
            f"namespace {namespace!r} does not exist; the operator keeps its {what} there. Create it "
            f"(kubectl create namespace {namespace}, or apply manifests/base/namespace.yaml) or pick "
            "another with --leader-election-namespace / $POD_NAMESPACE"
        ) from None


def user_agent(args: argparse.Namespace) -> str:
    from kaitopy import __version__

    return f"kaitopy/{__version__} ({args.component}; {args.identity})"


async def open_client(args: argparse.Namespace) -> Client:
    settings = ClientSettings(user_agent=user_agent(args))
    if args.kubeconfig:
        return await Client.from_kubeconfig(args.kubeconfig, settings=settings)
    return await Client.auto(settings=settings)


def manager_settings(args: argparse.Namespace, lease_name: str) -> ManagerSettings:
    probe_host: str | None
    if args.probe_address == "off":
        probe_host, probe_port = "0.0.0.0", None
    else:
        probe_host, _, port = str(args.probe_address).rpartition(":")
        probe_port = int(port)
    election = None
    if args.leader_elect:
        election = LeaderElectionSettings(
            lease_name=lease_name, namespace=args.leader_election_namespace, identity=args.identity
        )
    return ManagerSettings(
        leader_election=election, probe_host=probe_host or "0.0.0.0", probe_port=probe_port
    )


def run_process(args: argparse.Namespace, main: Callable[[], Awaitable[None]]) -> int:
    """Configure logging, run `main` to completion; exit 1 when leadership was lost (the process
    must not go on reconciling without the lease) or on a startup error, 0 after a clean stop."""
    logconfig.configure(args.log_format, args.log_level)

    async def wrapped() -> None:
        await main()

    try:
        asyncio.run(wrapped())
    except LeadershipLost as err:
        log.error("exiting: leadership lost", extra={"error": str(err)})
        return 1
    except StartupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
