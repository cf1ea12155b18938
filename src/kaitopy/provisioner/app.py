"""`kaitopy provisioner`: the NodeClaim controller and garbage collector over one cloud provider.
A separate process (and Deployment) from the workspace controller, as Kaito's gpu-provisioner is,
built on the same runtime library."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from kaitopy import process
from kaitopy.provisioner.cloudprovider import NODECLAIM_LABEL, CloudProvider
from kaitopy.provisioner.garbage import GarbageCollector
from kaitopy.provisioner.install import ensure_crds, ensure_default_nodeclass
from kaitopy.provisioner.kwok import KwokProvider, KwokSettings, NodeShape
from kaitopy.provisioner.lifecycle import NODE_INDEX, NODECLAIM, NodeClaimLifecycle, node_index
from kaitopy.provisioner.liveness import LivenessChecker
from kaitopy.provisioner.metrics import LeakMetrics, NodeClaimMetrics, register_nodeclaim_age
from kaitopy.provisioner.settings import ProvisionerSettings
from kaitopy.runtime import (
    Client,
    ControllerSettings,
    EventRecorder,
    Manager,
    Request,
    kinds,
)
from kaitopy.runtime.objects import Obj

log = logging.getLogger(__name__)
COMPONENT = "kaitopy-provisioner"
LEASE_NAME = "kaitopy-provisioner"
PROVIDERS = ("azure", "kwok", "local")


@dataclass
class Provisioner:
    """What `wire` registered on a manager; tests reach in for the collector and the lifecycle."""

    lifecycle: NodeClaimLifecycle
    collector: GarbageCollector


def claim_of_node(node: Obj) -> Iterable[Request]:
    name = ((node.get("metadata") or {}).get("labels") or {}).get(NODECLAIM_LABEL)
    return [Request("", str(name))] if name else []


def wire(mgr: Manager, client: Client, provider: CloudProvider, settings: ProvisionerSettings) -> Provisioner:
    """Register the NodeClaim controller and the garbage collector on `mgr`."""
    claims = mgr.cache.informer(NODECLAIM)
    # Only nodes we launched: a cluster's other nodes never matter here and would cost memory.
    nodes = mgr.cache.informer(kinds.NODE, label_selector=NODECLAIM_LABEL)
    nodes.add_indexer(NODE_INDEX, node_index)
    recorder = EventRecorder(client, COMPONENT)
    mgr.add_shutdown_hook(recorder.close)
    lifecycle = NodeClaimLifecycle(
        client,
        claims.store,
        nodes.store,
        provider,
        recorder,
        settings,
        metrics=mgr.metrics.extension("kaitopy_nodeclaim", NodeClaimMetrics),
    )
    (
        mgr.controller("nodeclaim.lifecycle")
        .for_(NODECLAIM)
        .watches(kinds.NODE, claim_of_node)
        .with_settings(ControllerSettings(max_concurrent_reconciles=settings.max_concurrent_reconciles))
        .build(lifecycle.reconcile)
    )
    register_nodeclaim_age(mgr.metrics, claims.store)
    leaks = mgr.metrics.extension("kaitopy_provisioner_leaks", LeakMetrics)
    collector = GarbageCollector(provider, claims, settings, metrics=leaks)
    mgr.add_runnable(collector.run)
    metrics = lifecycle.metrics
    liveness = LivenessChecker(
        client,
        provider,
        claims,
        recorder,
        settings,
        on_lost=metrics.observe_lost if metrics is not None else None,
        nodes=nodes,
    )
    mgr.add_runnable(liveness.run)
    return Provisioner(lifecycle, collector)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cloud-provider",
        choices=PROVIDERS,
        default=os.environ.get("KAITOPY_CLOUD_PROVIDER", "kwok"),
        help="where GPU nodes come from: azure (AKS agent pools), kwok (simulated nodes) or local "
        "(real kubelet + containerd nodes on this machine); "
        "env KAITOPY_CLOUD_PROVIDER",
    )
    d = ProvisionerSettings()
    parser.add_argument("--launch-timeout", type=float, default=d.launch_timeout_s, metavar="SECONDS")
    parser.add_argument(
        "--registration-timeout", type=float, default=d.registration_timeout_s, metavar="SECONDS"
    )
    parser.add_argument("--poll-interval", type=float, default=d.poll_interval_s, metavar="SECONDS")
    parser.add_argument("--gc-interval", type=float, default=d.gc_interval_s, metavar="SECONDS")
    parser.add_argument("--gc-grace", type=float, default=d.gc_grace_s, metavar="SECONDS")
    parser.add_argument(
        "--liveness-interval",
        type=float,
        default=d.liveness_interval_s,
        metavar="SECONDS",
        help="how often launched claims are checked for a lost instance, which is then replaced "
        f"(default {d.liveness_interval_s:.0f})",
    )
    parser.add_argument(
        "--node-repair-after",
        type=float,
        default=d.node_repair_after_s,
        metavar="SECONDS",
        help="a launched node NotReady this long while its instance runs is replaced; 0 turns node "
        f"repair off (default {d.node_repair_after_s:.0f})",
    )
    parser.add_argument(
        "--stuck-pod-grace",
        type=float,
        default=d.stuck_pod_grace_s,
        metavar="SECONDS",
        help="a drain stops waiting for a pod this long past its deletion time; it is force-deleted "
        f"with its node (default {d.stuck_pod_grace_s:.0f})",
    )
    parser.add_argument(
        "--max-concurrent-reconciles", type=int, default=d.max_concurrent_reconciles, metavar="N"
    )
    parser.add_argument(
        "--install-crds",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="create the NodeClaim and KaitoNodeClass CRDs when absent (development; the shipped "
        "manifests install them and pass --no-install-crds); the default node class is created either way",
    )
    kwok = parser.add_argument_group("kwok provider")
    kwok.add_argument("--kwok-launch-delay", type=float, default=0.0, metavar="SECONDS")
    kwok.add_argument(
        "--kwok-fail",
        action="append",
        default=[],
        metavar="INSTANCE_TYPE=REASON",
        help="simulate a terminal launch failure (QuotaExceeded, InsufficientCapacity, SKUNotAvailable)",
    )
    local = parser.add_argument_group("local provider (real nodes on this machine; needs root)")
    local.add_argument(
        "--local-dir",
        default=os.environ.get(
            "KAITOPY_LOCAL_NODES_DIR", str(Path.home() / ".cache" / "kaitopy" / "local-nodes")
        ),
        help="the provider's state: one folder per node (env KAITOPY_LOCAL_NODES_DIR)",
    )
    local.add_argument(
        "--local-bin-dir",
        default=os.environ.get("KAITOPY_LOCAL_BIN_DIR"),
        help="where kubelet, kube-proxy and crictl are (hack/ensure-binaries.sh; env KAITOPY_LOCAL_BIN_DIR)",
    )
    local.add_argument(
        "--local-ca",
        default=os.environ.get("KAITOPY_LOCAL_CA"),
        metavar="CERT,KEY",
        help="the cluster CA's certificate and key files, which sign each node's identity "
        "(env KAITOPY_LOCAL_CA)",
    )
    local.add_argument(
        "--local-pause-image",
        default=os.environ.get("KAITOPY_LOCAL_PAUSE_IMAGE", "10.229.254.1:5001/kaitopy/pause:dev"),
        help="the pod sandbox image, pulled from a reachable registry",
    )
    local.add_argument(
        "--local-insecure-registry",
        action="append",
        default=[
            r
            for r in os.environ.get("KAITOPY_LOCAL_INSECURE_REGISTRIES", "10.229.254.1:5001").split(",")
            if r
        ],
        metavar="HOST:PORT",
        help="a registry the nodes pull from over plain HTTP (loopback only)",
    )
    local.add_argument("--local-apiserver-url", default=os.environ.get("KAITOPY_LOCAL_APISERVER_URL"))
    process.add_process_arguments(parser, component="provisioner", default_probe_port=8082)


def settings_from(args: argparse.Namespace) -> ProvisionerSettings:
    return ProvisionerSettings(
        launch_timeout_s=args.launch_timeout,
        registration_timeout_s=args.registration_timeout,
        poll_interval_s=args.poll_interval,
        gc_interval_s=args.gc_interval,
        gc_grace_s=args.gc_grace,
        liveness_interval_s=args.liveness_interval,
        stuck_pod_grace_s=args.stuck_pod_grace,
        node_repair_after_s=args.node_repair_after,
        max_concurrent_reconciles=args.max_concurrent_reconciles,
    )


def _default_shapes() -> Callable[[str], NodeShape]:
    from kaitopy.provisioner.shapes import catalog_shapes

    return catalog_shapes()


ProviderFactory = Callable[[Client], CloudProvider]


def provider_factory(args: argparse.Namespace) -> ProviderFactory:
    """Check the provider's configuration before anything connects anywhere, so a missing
    setting is the first and only error the user sees."""
    if args.cloud_provider == "kwok":
        try:
            kwok = KwokSettings(
                launch_delay_s=args.kwok_launch_delay,
                failures=KwokSettings.parse_failures(args.kwok_fail),
            )
        except ValueError as err:
            raise process.StartupError(str(err)) from err
        shapes = _default_shapes()
        return lambda client: KwokProvider(client, shapes, kwok)
    if args.cloud_provider == "local":
        return _local_factory(args)
    from kaitopy.provisioner.azure import AzureConfigError, AzureProvider, AzureSettings

    try:
        azure = AzureSettings.from_env()
    except AzureConfigError as err:
        raise process.StartupError(str(err)) from err
    return lambda _client: AzureProvider(azure)


def _local_factory(args: argparse.Namespace) -> ProviderFactory:
    from kaitopy.provisioner.local.provider import LocalProvider, LocalSettings

    if not args.local_bin_dir:
        raise process.StartupError(
            "--cloud-provider=local needs --local-bin-dir (or KAITOPY_LOCAL_BIN_DIR): the folder with "
            "kubelet, kube-proxy and crictl; `bash hack/ensure-binaries.sh` builds them into "
            "~/.cache/kaitopy/bin/<kube version>"
        )
    bin_dir = Path(args.local_bin_dir)
    missing = [b for b in ("kubelet", "kube-proxy", "crictl") if not (bin_dir / b).is_file()]
    if missing:
        raise process.StartupError(
            f"--local-bin-dir {bin_dir} lacks {', '.join(missing)}; run hack/ensure-binaries.sh"
        )
    cert, sep, key = str(args.local_ca or "").partition(",")
    if not sep or not Path(cert).is_file() or not Path(key).is_file():
        raise process.StartupError(
            "--cloud-provider=local needs --local-ca CERT,KEY (or KAITOPY_LOCAL_CA): the cluster CA files "
            "that sign each node's client certificate (hack/localcluster.py keeps them in <cluster dir>/pki)"
        )
    settings = LocalSettings(
        root=Path(args.local_dir),
        bin_dir=bin_dir,
        ca_cert=Path(cert),
        ca_key=Path(key),
        pause_image=args.local_pause_image,
        insecure_registries=tuple(dict.fromkeys(args.local_insecure_registry)),
        apiserver_url=args.local_apiserver_url,
    )
    shapes = _default_shapes()
    return lambda client: LocalProvider(client, shapes, settings)


def run(
    args: argparse.Namespace,
    choose_provider: Callable[[argparse.Namespace], ProviderFactory] = provider_factory,
) -> int:
    """Run the provisioner process. `choose_provider` is the one seam: the fault suite runs this
    same process with a provider pointed at its ARM-shaped test server."""

    async def main() -> None:
        make_provider = choose_provider(args)
        client = await process.open_client(args)
        async with client:
            provider = make_provider(client)
            try:
                if args.leader_elect:
                    await process.require_namespace(client, args.leader_election_namespace, "leader lease")
                if args.install_crds:
                    await ensure_crds(client)
                # Also when the CRDs come from the manifests (--no-install-crds, no CRD rights):
                # the default node class is an object of ours, not a cluster-wide type.
                await ensure_default_nodeclass(client)
                mgr = Manager(client, process.manager_settings(args, LEASE_NAME))
                wire(mgr, client, provider, settings_from(args))
                log.info("provisioner starting", extra={"cloud_provider": provider.name})
                await mgr.run()
            finally:
                await provider.close()

    return process.run_process(args, main)
