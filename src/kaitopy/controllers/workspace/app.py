"""`kaitopy controller`: the Workspace controller process (and, unless told otherwise, the
admission webhook beside it)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import re
from typing import Any

from kaitopy import process
from kaitopy.controllers.workspace.plan import Settings
from kaitopy.controllers.workspace.setup import wire
from kaitopy.runtime import Client, Manager

log = logging.getLogger(__name__)
LEASE_NAME = "kaitopy-workspace-controller"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Settings()
    parser.add_argument(
        "--runtime-image",
        default=os.environ.get("KAITOPY_RUNTIME_IMAGE", d.runtime_image),
        help="model server image used when a preset does not name one (env KAITOPY_RUNTIME_IMAGE)",
    )
    parser.add_argument(
        "--cpu-runtime-image",
        default=os.environ.get("KAITOPY_CPU_RUNTIME_IMAGE", d.cpu_runtime_image),
        help="model server image for presets that run on CPU (transformers engine, no vLLM) "
        "(env KAITOPY_CPU_RUNTIME_IMAGE)",
    )
    parser.add_argument(
        "--cpu-vllm-runtime-image",
        default=os.environ.get("KAITOPY_CPU_VLLM_RUNTIME_IMAGE", d.cpu_vllm_runtime_image),
        help="model server image for presets on vLLM's CPU build, the multi-node CPU preset "
        "(env KAITOPY_CPU_VLLM_RUNTIME_IMAGE)",
    )
    parser.add_argument(
        "--weights-registry",
        default=os.environ.get("KAITOPY_WEIGHTS_REGISTRY", d.weights_registry),
        metavar="REGISTRY/PREFIX",
        help="where presets with OCI weights find them: <prefix>/<preset>:<version> "
        "(env KAITOPY_WEIGHTS_REGISTRY)",
    )
    parser.add_argument(
        "--weights-digest",
        action="append",
        default=None,
        metavar="PRESET=sha256:...",
        help="pin a preset's weights artifact to a manifest digest (repeatable; env "
        "KAITOPY_WEIGHTS_DIGESTS, comma separated)",
    )
    parser.add_argument(
        "--weights-plain-http",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("KAITOPY_WEIGHTS_PLAIN_HTTP", "").lower() in ("1", "true", "yes"),
        help="pull weights artifacts over HTTP (env KAITOPY_WEIGHTS_PLAIN_HTTP=1)",
    )
    parser.add_argument(
        "--weights-pull-secret",
        default=os.environ.get("KAITOPY_WEIGHTS_PULL_SECRET", d.weights_pull_secret),
        metavar="SECRET",
        help="a dockerconfigjson Secret in the workspace's namespace with the weights registry's "
        "credentials (env KAITOPY_WEIGHTS_PULL_SECRET; default: anonymous)",
    )
    parser.add_argument("--tuning-image", default=os.environ.get("KAITOPY_TUNING_IMAGE", d.tuning_image))
    parser.add_argument(
        "--tools-image",
        default=os.environ.get("KAITOPY_TOOLS_IMAGE", d.tools_image),
        help="a static busybox image used to unpack adapter and data images that have no shell",
    )
    parser.add_argument(
        "--tuning-deadline",
        type=int,
        default=int(os.environ.get("KAITOPY_TUNING_DEADLINE", d.tuning_deadline_s)),
        metavar="SECONDS",
        help="a tuning Job's activeDeadlineSeconds (env KAITOPY_TUNING_DEADLINE; default 86400, 24 h)",
    )
    parser.add_argument(
        "--tuning-max-urls",
        type=int,
        default=int(os.environ.get("KAITOPY_TUNING_MAX_URLS", d.tuning_max_urls)),
        metavar="N",
        help="most tuning.input.urls a workspace may list (env KAITOPY_TUNING_MAX_URLS; default 100)",
    )
    parser.add_argument(
        "--tuning-max-input-bytes",
        type=int,
        default=int(os.environ.get("KAITOPY_TUNING_MAX_INPUT_BYTES", d.tuning_max_input_bytes)),
        metavar="BYTES",
        help="total bytes a tuning Job may download from its input URLs; also sizes the data "
        "volume (env KAITOPY_TUNING_MAX_INPUT_BYTES; default 50 GiB)",
    )
    parser.add_argument(
        "--plain-http-registry",
        action="append",
        default=None,
        metavar="HOST[:PORT]",
        help="a registry without TLS: tuning Jobs push their adapter images to it over HTTP "
        "(repeatable; env KAITOPY_PLAIN_HTTP_REGISTRIES, comma separated)",
    )
    parser.add_argument(
        "--url-allow-network",
        action="append",
        default=None,
        metavar="CIDR",
        help="a private network that tuning.input.urls may reach: an in-cluster data server you "
        "trust (repeatable; env KAITOPY_URL_ALLOW_NETWORKS, comma separated; default none: public "
        "addresses only). Admission and the Job's downloader both honour it; metadata, link-local "
        "and loopback ranges are refused",
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
    parser.add_argument(
        "--watch-namespaces",
        default=os.environ.get("KAITOPY_WATCH_NAMESPACES", ""),
        metavar="NS[,NS...]",
        help="namespace-scoped mode: watch and act only on Workspaces (and their workloads) in these "
        "namespaces, so a Role in each is enough instead of cluster-wide workload rights; the "
        "webhook, when this process registers it, is limited to them too (env "
        "KAITOPY_WATCH_NAMESPACES; default: all namespaces)",
    )
    parser.add_argument(
        "--inferenceset-autoscale-interval",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how often the built-in autoscaler reads each autoscaled InferenceSet's members and "
        "its idle clock (default 15, as the HPA)",
    )
    parser.add_argument(
        "--inferenceset-metrics-url",
        default=os.environ.get("KAITOPY_INFERENCESET_METRICS_URL", ""),
        metavar="TEMPLATE",
        help="where the autoscaler reads a member's /metrics, with {namespace} and {member} filled in, "
        "for a controller that cannot reach cluster IPs (outside the cluster, or no kube-proxy), e.g. "
        "through `kubectl proxy`: http://127.0.0.1:8001/api/v1/namespaces/{namespace}/services/"
        "{member}:80/proxy/metrics (env KAITOPY_INFERENCESET_METRICS_URL; default: the member "
        "Service's cluster IP)",
    )
    parser.add_argument(
        "--activator-host",
        default=os.environ.get("KAITOPY_ACTIVATOR_HOST", ""),
        metavar="HOST",
        help="what the Service <set> of an InferenceSet that scales to zero points at (ExternalName); "
        "default kaitopy-activator.<operator namespace>.svc.<cluster domain>; 'none': make no such Services",
    )
    parser.add_argument(
        "--cluster-domain",
        default=os.environ.get("KAITOPY_CLUSTER_DOMAIN", "cluster.local"),
        help="the cluster's DNS domain, for the activator's full name (default cluster.local)",
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
        "--install-webhook-configuration",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="create/update the whole kaitopy-workspace-validation ValidatingWebhookConfiguration "
        "(development); the shipped manifests pass --no-install-webhook-configuration: they ship "
        "the object and the controller only writes its caBundle",
    )
    hook.add_argument(
        "--webhook-url",
        default=os.environ.get("KAITOPY_WEBHOOK_URL"),
        help="URL the API server calls instead of the kaitopy-webhook Service ({port}: the bound port); "
        "for an operator running outside the cluster, e.g. https://127.0.0.1:{port}/validate",
    )
    process.add_process_arguments(parser, component="controller", default_probe_port=8081)


def _listed(given: list[str] | None, env: str | None) -> list[str]:
    """A repeatable flag's values, else the comma-separated env value's."""
    items = given if given is not None else (env or "").split(",")
    return [i.strip() for i in items if i.strip()]


def plain_http_registries(given: list[str] | None, env: str | None) -> tuple[str, ...]:
    out = []
    for item in _listed(given, env):
        if "/" in item or "://" in item:
            raise SystemExit(
                f"--plain-http-registry {item!r}: give the registry as it appears in image references, "
                "host[:port] (e.g. registry.internal:5000), without a scheme or path"
            )
        out.append(item)
    return tuple(dict.fromkeys(out))


def url_allowed_networks(given: list[str] | None, env: str | None) -> tuple[str, ...]:
    from kaitopy.ssrf.addresses import allowed_network

    out = []
    for item in _listed(given, env):
        try:
            out.append(str(allowed_network(item)))
        except ValueError as exc:
            raise SystemExit(f"--url-allow-network {exc}") from None
    return tuple(dict.fromkeys(out))


def weights_digests(given: list[str] | None, env: str | None) -> dict[str, str]:
    """PRESET=sha256:... pairs from the flags, else from the comma-separated env value."""
    items = given if given is not None else [i for i in (env or "").split(",") if i.strip()]
    out: dict[str, str] = {}
    for item in items:
        preset, sep, digest = item.strip().partition("=")
        if not sep or not preset:
            raise SystemExit(f"--weights-digest {item!r}: expected PRESET=sha256:<64 hex digits>")
        if not _DIGEST.match(digest):
            raise SystemExit(f"--weights-digest {item!r}: expected PRESET=sha256:<64 lowercase hex digits>")
        out[preset] = digest
    return out


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def watch_namespaces(value: str) -> tuple[str, ...] | None:
    """The --watch-namespaces list (None: all namespaces), each checked to be a namespace name."""
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    for name in names:
        if not _DNS_LABEL.match(name):
            raise SystemExit(
                f"--watch-namespaces: {name!r} is not a namespace name (lowercase letters, digits and '-', "
                "at most 63); give a comma-separated list such as team-a,team-b"
            )
    return names or None


def namespace_selector(namespaces: tuple[str, ...] | None) -> dict[str, Any] | None:
    """The webhook's namespaceSelector for namespace-scoped mode (None: every namespace)."""
    if not namespaces:
        return None
    return {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": list(namespaces)}
        ]
    }


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        runtime_image=args.runtime_image,
        tuning_image=args.tuning_image,
        tools_image=args.tools_image,
        node_provisioner=args.node_provisioner,
        cpu_runtime_image=args.cpu_runtime_image,
        cpu_vllm_runtime_image=args.cpu_vllm_runtime_image,
        weights_registry=args.weights_registry,
        weights_digests=weights_digests(args.weights_digest, os.environ.get("KAITOPY_WEIGHTS_DIGESTS")),
        weights_plain_http=args.weights_plain_http,
        weights_pull_secret=args.weights_pull_secret,
        tuning_deadline_s=_positive("--tuning-deadline", args.tuning_deadline),
        tuning_max_urls=_positive("--tuning-max-urls", args.tuning_max_urls),
        tuning_max_input_bytes=_positive("--tuning-max-input-bytes", args.tuning_max_input_bytes),
        plain_http_registries=plain_http_registries(
            args.plain_http_registry, os.environ.get("KAITOPY_PLAIN_HTTP_REGISTRIES")
        ),
        url_allowed_networks=url_allowed_networks(
            args.url_allow_network, os.environ.get("KAITOPY_URL_ALLOW_NETWORKS")
        ),
        # The operator's own namespace (its pod's, $POD_NAMESPACE): where the default ConfigMaps are.
        operator_namespace=args.leader_election_namespace,
    )


def activator_host_of(args: argparse.Namespace) -> str | None:
    """Where the front Services of sets that scale to zero point; None: make none."""
    from kaitopy.controllers.inferenceset.front import activator_host

    if args.activator_host == "none":
        return None
    return args.activator_host or activator_host(args.leader_election_namespace, args.cluster_domain)


def _positive_seconds(flag: str, value: float) -> float:
    if not value > 0:
        raise SystemExit(f"{flag} {value}: must be a positive number of seconds")
    return value


def _positive(flag: str, value: int) -> int:
    if value < 1:
        raise SystemExit(f"{flag} {value}: must be a positive whole number")
    return value


async def wire_inferencesets(
    mgr: Manager,
    client: Client,
    operator_namespace: str,
    autoscale_interval_s: float,
    activator_host: str | None,
    metrics_url_template: str = "",
) -> None:
    """The InferenceSet controller, where the API server serves the kind (its CRD is optional: an
    installation from before it existed keeps working without it)."""
    from kaitopy.api.constants import INFERENCESET
    from kaitopy.controllers.inferenceset.setup import wire as wire_sets
    from kaitopy.runtime import NotFound

    try:
        await client.kind(INFERENCESET.api_version, INFERENCESET.kind)
    except NotFound:
        log.warning("InferenceSet CRD not installed: the InferenceSet controller is off")
        return
    wire_sets(
        mgr,
        client,
        operator_namespace=operator_namespace,
        autoscale_interval_s=autoscale_interval_s,
        activator_host=activator_host,
        metrics_url_template=metrics_url_template or None,
    )


def metrics_url_template_of(args: argparse.Namespace) -> str:
    """--inferenceset-metrics-url, checked before anything starts."""
    from kaitopy.controllers.inferenceset.scrape import check_template

    template = str(args.inferenceset_metrics_url)
    if template:
        try:
            check_template(template)
        except ValueError as err:
            raise SystemExit(f"--inferenceset-metrics-url {err}") from err
    return template


def run(args: argparse.Namespace) -> int:
    from kaitopy.api import WORKSPACE
    from kaitopy.controllers.workspace.crds import ensure_workspace_crd
    from kaitopy.controllers.workspace.planner import make_planner
    from kaitopy.presets import Catalog
    from kaitopy.provisioner.install import ensure_crds

    settings = settings_from(args)
    watch = watch_namespaces(args.watch_namespaces)
    metrics_url_template = metrics_url_template_of(args)

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
                    manage_configuration=args.install_webhook_configuration,
                    namespace_selector=namespace_selector(watch),
                    url_allowed_networks=settings.url_allowed_networks,
                )
                server = await stack.enter_async_context(WebhookServer(client, hook))
                stack.push_async_callback(server.deregister)
                log.info("admission webhook serving", extra={"port": server.port})
            mgr = Manager(
                client, dataclasses.replace(process.manager_settings(args, LEASE_NAME), namespaces=watch)
            )
            wire(
                mgr,
                client,
                make_planner(Catalog.load(), settings),
                settings,
                WORKSPACE,
                max_concurrent_reconciles=args.max_concurrent_reconciles,
                resync_period=args.resync_period,
            )
            await wire_inferencesets(
                mgr,
                client,
                args.leader_election_namespace,
                _positive_seconds("--inferenceset-autoscale-interval", args.inferenceset_autoscale_interval),
                activator_host_of(args),
                metrics_url_template,
            )
            log.info(
                "workspace controller starting",
                extra={"node_provisioner": settings.node_provisioner, "watch_namespaces": watch or "all"},
            )
            await mgr.run()

    return process.run_process(args, main)
