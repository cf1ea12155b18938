#!/usr/bin/env python3
"""The main job on the local control plane (what `make run` does): start the cluster, run the
workspace controller and the kwok provisioner, apply the phi-3 example, wait for it to succeed,
and print `kubectl get workspace` as the README shows.

    python hack/demo.py [--example PATH] [--timeout SECONDS] [--keep-running]

The operator's logs are written to <cluster dir>/logs/{controller,provisioner}.log.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_EXAMPLE = REPO / "examples" / "inference" / "kaito_workspace_phi_3.yaml"


def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def kubectl(kubeconfig: Path, bin_dir: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(
        [str(bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--example", type=Path, default=DEFAULT_EXAMPLE)
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--keep-running", action="store_true", help="leave the operator running afterwards")
    args = ap.parse_args()

    up = subprocess.run(
        [sys.executable, str(REPO / "hack" / "localcluster.py"), "up"], capture_output=True, text=True
    )
    if up.returncode != 0:
        sys.stderr.write(up.stderr)
        return 1
    kubeconfig = Path(up.stdout.strip().splitlines()[-1])
    state = json.loads((kubeconfig.parent / "state.json").read_text())
    bin_dir = Path(state["bin_dir"])
    logs = kubeconfig.parent / "logs"
    logs.mkdir(exist_ok=True)
    say(f"local control plane up (KUBECONFIG={kubeconfig})")

    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    kaitopy = Path(sys.executable).parent / "kaitopy"
    procs: list[subprocess.Popen[bytes]] = []
    for name, argv in (
        (
            "provisioner",
            [str(kaitopy), "provisioner", "--cloud-provider=kwok", "--probe-address=127.0.0.1:0"],
        ),
        (
            "controller",
            [
                str(kaitopy),
                "controller",
                "--probe-address=off",
                "--webhook-port=0",
                "--webhook-url=https://127.0.0.1:{port}/validate",
            ],
        ),
    ):
        log_file = (logs / f"{name}.log").open("ab")
        procs.append(subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT))
        say(f"started the {name} (pid {procs[-1].pid}, log {logs / f'{name}.log'})")
    try:
        # The controller installs the CRDs and the webhook; wait until Workspaces are served.
        deadline = time.monotonic() + 60
        while kubectl(kubeconfig, bin_dir, "get", "crd", "workspaces.kaito.sh", check=False).strip() == "":
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit("the operator did not install the Workspace CRD; see its logs")
            time.sleep(0.5)
        shown = args.example.relative_to(REPO) if args.example.is_relative_to(REPO) else args.example
        say(f"applying {shown}")
        print(kubectl(kubeconfig, bin_dir, "apply", "-f", str(args.example)), end="")
        name = kubectl(kubeconfig, bin_dir, "get", "-f", str(args.example), "-o", "jsonpath={.metadata.name}")
        started = time.monotonic()
        out = kubectl(
            kubeconfig,
            bin_dir,
            "wait",
            f"workspace/{name}",
            "--for=condition=WorkspaceSucceeded",
            f"--timeout={int(args.timeout)}s",
            check=False,
        )
        if "condition met" not in out:
            print(kubectl(kubeconfig, bin_dir, "get", "workspace", name, "-o", "yaml"))
            raise SystemExit(f"workspace {name} did not succeed within {args.timeout:.0f}s")
        say(f"workspace {name} succeeded in {time.monotonic() - started:.1f}s")
        print(kubectl(kubeconfig, bin_dir, "get", "workspace", name), end="")
        print(
            kubectl(
                kubeconfig,
                bin_dir,
                "get",
                "nodeclaims,nodes,deployments,services",
                "-l",
                f"kaito.sh/workspace={name}",
            ),
            end="",
        )
        if args.keep_running:
            say("operator left running; stop it with: kill " + " ".join(str(p.pid) for p in procs))
            return 0
        # Clean up while the operator still runs: its finalizer removes the GPU nodes first.
        kubectl(kubeconfig, bin_dir, "delete", "-f", str(args.example), "--timeout=120s")
        say(f"deleted workspace {name} and its nodes (run with --keep-running to keep them)")
    finally:
        if not args.keep_running:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
