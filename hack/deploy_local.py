#!/usr/bin/env python3
"""`make deploy PROVIDER=kwok CLUSTER=local`: the shipped manifests on the local control plane.

The local control plane has no kubelet and no pod network, so the operator's pods cannot run in
it. This script applies the overlay exactly as `make deploy` does on a real cluster, then plays
the kubelet for the operator's own Deployments: for each one it starts the container's args
(from the rendered manifest, env resolved as the kubelet would) as a local process,
authenticated as the Deployment's service account with a token from the TokenRequest API, so
the RBAC that runs is the RBAC that ships. It then scales those Deployments to zero (their pods
are these processes) and, unless told not to, applies the phi-3 example and waits for it.

Where it can (root, with unshare and setpriv), each process also gets its container's
filesystem rules: a read-only root, writable only at the Deployment's emptyDir mount paths, and no
capabilities. What differs from a pod, and why: one replica each (two local replicas would fight
over one loopback webhook registration); probe addresses on free loopback ports (no per-pod
network); the webhook is registered at its loopback URL instead of through the kaitopy-webhook
Service; the user id is not changed (this machine's Python may not be readable by it).

    python hack/deploy_local.py up [--provider kwok] [--example PATH | --no-example]
    python hack/deploy_local.py down
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from localkube import bin_dir_of, kubectl

REPO = Path(__file__).resolve().parent.parent
DEFAULT_EXAMPLE = REPO / "examples" / "inference" / "kaito_workspace_phi_3.yaml"


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def resolve_env(container: dict[str, Any], pod_namespace: str, pod_name: str) -> dict[str, str]:
    """The container's env as the kubelet would set it (the downward-API fields the manifests use)."""
    out: dict[str, str] = {}
    fields = {"metadata.namespace": pod_namespace, "metadata.name": pod_name}
    for var in container.get("env") or ():
        if "value" in var:
            out[var["name"]] = str(var["value"])
            continue
        path = ((var.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        if path not in fields:
            raise SystemExit(f"env {var['name']}: only {sorted(fields)} can be resolved locally, not {var}")
        out[var["name"]] = fields[path]
    return out


def local_args(args: list[str], probe_port: int, is_controller: bool) -> list[str]:
    """The container's args with the pod-network-only settings replaced (see the module doc)."""
    out = [a for a in args if not a.startswith("--probe-address")]
    out.append(f"--probe-address=127.0.0.1:{probe_port}")
    if is_controller:
        out += ["--webhook-port=0", "--webhook-url=https://127.0.0.1:{port}/validate"]
    return out


def as_in_the_pod(argv: list[str], pod_spec: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """Wrap argv so the process sees the container's filesystem rules: with readOnlyRootFilesystem,
    a private mount namespace where / is read-only except the container's emptyDir mountPaths, and
    no capabilities. The "image" here is this machine's own filesystem, which may keep the repo and
    its venv under a volume's path (a clone in /tmp), so each mountPath stays this machine's
    directory, writable, rather than an empty tmpfs that would hide them. (runAsUser is not
    emulated: this machine's Python may live where that user cannot read.)"""
    security = container.get("securityContext") or {}
    if not security.get("readOnlyRootFilesystem"):
        return argv
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("setpriv") is None:
        say("cannot emulate readOnlyRootFilesystem (needs root, unshare and setpriv); / stays writable")
        return argv
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or ()}
    steps = []
    for mount in container.get("volumeMounts") or ():
        volume = volumes[mount["name"]]
        path = str(mount["mountPath"])
        if "emptyDir" not in volume:
            raise SystemExit(f"volume {mount['name']}: only emptyDir volumes are emulated here")
        if not Path(path).is_dir():
            raise SystemExit(f"volume {mount['name']}: {path} does not exist here to stand in for it")
        # A mount point of its own, so the read-only remount of / below leaves it writable.
        steps.append(f"mount --bind {shlex.quote(path)} {shlex.quote(path)}")
    steps.append("mount -o remount,bind,ro /")
    steps.append('exec setpriv --no-new-privs --bounding-set=-all --inh-caps=-all "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", " && ".join(steps), "pod", *argv]


def token_kubeconfig(kube: Kube, account: str, namespace: str, out: Path) -> Path:
    token = kube("create", "token", account, "-n", namespace, "--duration=24h").strip()
    config = json.loads(kube.kubeconfig.read_text())
    config["users"] = [{"name": account, "user": {"token": token}}]
    for ctx in config["contexts"]:
        ctx["context"]["user"] = account
    out.write_text(json.dumps(config))
    out.chmod(0o600)
    return out


def wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"not ready within {timeout:.0f}s; see {log}")


def up(args: argparse.Namespace) -> int:
    kubeconfig = cluster_kubeconfig()
    kube = Kube(kubeconfig)
    work = kubeconfig.parent / "deploy-local"
    if (work / "pids.json").exists():
        down_processes(work)
    work.mkdir(exist_ok=True)
    overlay = REPO / "manifests" / "overlays" / args.provider
    rendered = kube("kustomize", str(overlay))
    say(f"applying {overlay.relative_to(REPO)} (server-side, as make deploy does)")
    print(kube("apply", "--server-side", "--force-conflicts", "-f", "-", input=rendered), end="")
    deployments = [d for d in yaml.safe_load_all(rendered) if d and d.get("kind") == "Deployment"]
    pids: dict[str, int] = {}
    for dep in deployments:
        name, namespace = dep["metadata"]["name"], dep["metadata"]["namespace"]
        spec = dep["spec"]["template"]["spec"]
        container = spec["containers"][0]
        account = spec.get("serviceAccountName", "default")
        identity = token_kubeconfig(kube, account, namespace, work / f"{name}.kubeconfig")
        port = free_port()
        argv = local_args([str(a) for a in container.get("args") or ()], port, name.endswith("controller"))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "PYTHONUNBUFFERED": "1",
            **resolve_env(container, namespace, f"{name}-local"),
            "KUBECONFIG": str(identity),
        }
        log = work / f"{name}.log"
        proc = subprocess.Popen(
            as_in_the_pod([sys.executable, "-m", "kaitopy", *argv], spec, container),
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this script, like a pod outlives `kubectl apply`
        )
        pids[name] = proc.pid
        (work / "pids.json").write_text(json.dumps(pids))
        say(f"{name}: kaitopy {' '.join(argv)}  (as {namespace}/{account}, pid {proc.pid}, log {log})")
        wait_ready(port, proc, log)
        kube("scale", "deployment", name, "-n", namespace, "--replicas=0")
    if args.no_example:
        say("operator running; `python hack/deploy_local.py down` (make undeploy CLUSTER=local) stops it")
        return 0
    say(f"applying {args.example.relative_to(REPO) if args.example.is_relative_to(REPO) else args.example}")
    print(kube("apply", "-f", str(args.example)), end="")
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


def down_processes(work: Path) -> None:
    pids_file = work / "pids.json"
    if not pids_file.exists():
        return
    pids: dict[str, int] = json.loads(pids_file.read_text())
    for name, pid in pids.items():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
        say(f"stopped {name} (pid {pid})")
    pids_file.unlink()


def down(args: argparse.Namespace) -> int:
    kubeconfig = cluster_kubeconfig()
    kube = Kube(kubeconfig)
    work = kubeconfig.parent / "deploy-local"
    if not args.no_example and kube("get", "crd", "workspaces.kaito.sh", check=False).strip():
        # While the operator still runs: its finalizer removes the nodes before the workspace goes.
        kube("delete", "-f", str(args.example), "--ignore-not-found", "--timeout=120s")
    down_processes(work)
    rendered = kube("kustomize", str(REPO / "manifests" / "overlays" / args.provider))
    kept = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] != "CustomResourceDefinition"]
    kube("delete", "--ignore-not-found", "-f", "-", input=yaml.safe_dump_all(kept))
    kube("delete", "validatingwebhookconfiguration", "kaitopy-workspace-validation", "--ignore-not-found")
    say("operator removed (the CRDs stay: deleting them would delete every workspace)")
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
