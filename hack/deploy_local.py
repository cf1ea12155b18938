#!/usr/bin/env python3
"""`make deploy PROVIDER=kwok CLUSTER=local`: the shipped manifests on the local control plane,
the operator running as real pods.

1. The images are built from docker/ (buildah) and pushed to the loopback registry
   (hack/images.py; cached by content).
2. A system node joins the cluster: a real kubelet + containerd node made by the `local` provider's
   code (docs/local-nodes.md), with no GPU and no taint, as a real cluster's system pool would be.
3. The overlay is rendered with kustomize and applied server-side, as `make deploy` does on a real
   cluster, with two local settings only: the images point at the loopback registry (pinned by
   digest) and the operator's pods are placed on the system node. Everything else (args, probes,
   service accounts and RBAC, security contexts, the read-only root, the webhook Service) is what
   ships. The API server calls the webhook through its Service, the pods reach the API server
   through the `kubernetes` Service.
4. Unless told not to, it applies the phi-3 example and waits for WorkspaceSucceeded (its GPU node
   is a kwok node: the kwok provider runs in the provisioner pod).

    python hack/deploy_local.py up [--provider kwok] [--example PATH | --no-example]
    python hack/deploy_local.py down [--example PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import images
import yaml
from localkube import bin_dir_of, kubectl

REPO = Path(__file__).resolve().parent.parent
DEFAULT_EXAMPLE = REPO / "examples" / "inference" / "kaito_workspace_phi_3.yaml"
SYSTEM_NODE = "kaitopy-system"
IMAGES = ("pause", "tools", "controller")


def say(msg: str) -> None:
    print(f"deploy-local: {msg}", flush=True)


class Kube:
    """kubectl against one kubeconfig of the local control plane."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.bin_dir = bin_dir_of(kubeconfig)

    def __call__(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 180) -> str:
        return kubectl(self.kubeconfig, self.bin_dir, *args, input=input, check=check, timeout=timeout)


def cluster_kubeconfig() -> Path:
    up = subprocess.run(
        [sys.executable, str(REPO / "hack" / "localcluster.py"), "up"], capture_output=True, text=True
    )
    if up.returncode != 0:
        raise SystemExit(up.stderr)
    return Path(up.stdout.strip().splitlines()[-1])


# -- the system node ------------------------------------------------------------------------------


def system_provider(kubeconfig: Path, refs: dict[str, str]) -> Any:
    """The local provider's code, set up for one CPU-only node with no taint."""
    from kaitopy.provisioner.kwok import NodeShape
    from kaitopy.provisioner.local.provider import LocalProvider, LocalSettings
    from kaitopy.runtime import Client

    pki = kubeconfig.parent / "pki"
    registry = refs["pause"].split("/", 1)[0]
    settings = LocalSettings(
        root=kubeconfig.parent / "system-nodes",
        bin_dir=bin_dir_of(kubeconfig),
        ca_cert=pki / "ca.crt",
        ca_key=pki / "ca.key",
        pause_image=refs["pause"],
        insecure_registries=(registry,),
    )

    async def make() -> Any:
        client = await Client.from_kubeconfig(str(kubeconfig))
        shape = NodeShape(capacity={}, labels={"kaitopy.sh/pool": "system"})
        return client, LocalProvider(client, lambda _sku: shape, settings)

    return make


LAUNCH_TRIES = 3


async def system_node_up(kubeconfig: Path, refs: dict[str, str]) -> None:
    from kaitopy.provisioner.cloudprovider import CloudProviderError, LaunchRequest
    from kaitopy.provisioner.local.system import log_tail

    client, provider = await system_provider(kubeconfig, refs)()
    async with client:
        request = LaunchRequest(claim_name=SYSTEM_NODE, instance_type="system")
        # A failed launch is tried again, as the NodeClaim lifecycle does (a start is idempotent:
        # what already runs is kept); the error says why each try failed.
        for attempt in range(1, LAUNCH_TRIES + 1):
            try:
                token = await provider.begin_launch(request)
                break
            except CloudProviderError as err:
                if attempt == LAUNCH_TRIES:
                    raise
                print(f"deploy-local: launch {attempt} of {LAUNCH_TRIES} failed, retrying: {err}", flush=True)
                await asyncio.sleep(2 * attempt)
        deadline = time.monotonic() + 120
        while not (await provider.poll_launch(request, token)).done:
            if time.monotonic() > deadline:
                logs = kubeconfig.parent / "system-nodes" / "nodes" / SYSTEM_NODE / "logs"
                tails = "; ".join(f"{f.name}: {log_tail(f, lines=8)}" for f in sorted(logs.glob("*.log")))
                raise SystemExit(f"node {SYSTEM_NODE} did not register within 120s; {tails}")
            await asyncio.sleep(0.5)


async def system_node_down(kubeconfig: Path, refs: dict[str, str]) -> None:
    client, provider = await system_provider(kubeconfig, refs)()
    async with client:
        await provider.begin_delete(SYSTEM_NODE)


# -- the operator ---------------------------------------------------------------------------------


def localized(rendered: str, controller_image: str) -> list[dict[str, Any]]:
    """The overlay's objects with the two local settings (see the module doc)."""
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for doc in docs:
        if doc.get("kind") != "Deployment":
            continue
        spec = doc["spec"]["template"]["spec"]
        for container in spec["containers"]:
            container["image"] = controller_image
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), "kubernetes.io/hostname": SYSTEM_NODE}
    return docs


def up(args: argparse.Namespace) -> int:
    kubeconfig = cluster_kubeconfig()
    kube = Kube(kubeconfig)
    say("building the images (cached by content) and starting the loopback registry")
    refs = images.ensure(list(IMAGES))
    started = time.monotonic()
    asyncio.run(system_node_up(kubeconfig, refs))
    say(f"node {SYSTEM_NODE} joined in {time.monotonic() - started:.1f}s")
    kube("wait", f"node/{SYSTEM_NODE}", "--for=condition=Ready", "--timeout=120s", timeout=150)
    overlay = REPO / "manifests" / "overlays" / args.provider
    docs = localized(kube("kustomize", str(overlay)), refs["controller"])
    say(f"applying {overlay.relative_to(REPO)} (server-side, as make deploy does)")
    say(f"image: {refs['controller']}")
    rendered = yaml.safe_dump_all(docs)
    print(kube("apply", "--server-side", "--force-conflicts", "-f", "-", input=rendered), end="")
    for dep in (d for d in docs if d["kind"] == "Deployment"):
        name, namespace = dep["metadata"]["name"], dep["metadata"]["namespace"]
        started = time.monotonic()
        kube("rollout", "status", f"deployment/{name}", "-n", namespace, "--timeout=300s", timeout=330)
        say(f"{name}: rolled out in {time.monotonic() - started:.1f}s")
    print(kube("get", "pods", "-n", "kaito-system", "-o", "wide"), end="")
    if args.no_example:
        say("operator running; `python hack/deploy_local.py down` (make undeploy CLUSTER=local) removes it")
        return 0
    shown = args.example.relative_to(REPO) if args.example.is_relative_to(REPO) else args.example
    say(f"applying {shown}")
    # The webhook is served by the pods: the first apply may come before its Service has endpoints.
    deadline = time.monotonic() + 90
    while not (out := kube("apply", "-f", str(args.example), check=False)).strip():
        if time.monotonic() > deadline:
            kube("apply", "-f", str(args.example))  # exits with kubectl's own error
        time.sleep(2)
    print(out, end="")
    ws = kube("get", "-f", str(args.example), "-o", "jsonpath={.metadata.name}")
    started = time.monotonic()
    kube(
        "wait",
        "-f",
        str(args.example),
        "--for=condition=WorkspaceSucceeded",
        f"--timeout={args.timeout:.0f}s",
        timeout=args.timeout + 30,
    )
    say(f"workspace {ws} succeeded after {time.monotonic() - started:.1f}s")
    print(kube("get", "-f", str(args.example)), end="")
    return 0


def down(args: argparse.Namespace) -> int:
    kubeconfig = cluster_kubeconfig()
    kube = Kube(kubeconfig)
    if not args.no_example and kube("get", "crd", "workspaces.kaito.sh", check=False).strip():
        # While the operator still runs: its finalizer removes the nodes before the workspace goes.
        kube("delete", "-f", str(args.example), "--ignore-not-found", "--timeout=120s")
    rendered = kube("kustomize", str(REPO / "manifests" / "overlays" / args.provider))
    kept = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] != "CustomResourceDefinition"]
    kube(
        "delete", "--ignore-not-found", "--wait=true", "-f", "-", input=yaml.safe_dump_all(kept), timeout=240
    )
    kube("delete", "validatingwebhookconfiguration", "kaitopy-workspace-validation", "--ignore-not-found")
    asyncio.run(system_node_down(kubeconfig, images.ensure(["pause"])))
    kube("delete", "node", SYSTEM_NODE, "--ignore-not-found")
    say(
        f"operator and node {SYSTEM_NODE} removed (the CRDs stay: deleting them would delete every workspace)"
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=("up", "down"))
    ap.add_argument("--provider", default="kwok", choices=("kwok", "byo"))
    ap.add_argument("--example", type=Path, default=DEFAULT_EXAMPLE)
    ap.add_argument("--no-example", action="store_true", help="deploy only; apply no workspace")
    ap.add_argument("--timeout", type=float, default=180.0)
    args = ap.parse_args()
    return up(args) if args.action == "up" else down(args)


if __name__ == "__main__":
    sys.exit(main())
