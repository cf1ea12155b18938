#!/usr/bin/env python3
"""The main job on the local control plane (what `make run` does): start the cluster, run the
workspace controller and the kwok provisioner, apply the phi-3 example, wait for it to succeed,
and print `kubectl get workspace` as the README shows.

    python hack/demo.py [--example PATH] [--timeout SECONDS] [--keep-running]

The operator's logs are written to <cluster dir>/logs/{controller,provisioner}.log.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from localkube import kubectl

REPO = Path(__file__).resolve().parent.parent
DEFAULT_EXAMPLE = REPO / "examples" / "inference" / "kaito_workspace_phi_3.yaml"


def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def pod_server_argv(deployment: dict[str, object], model_dir: Path, port: int) -> tuple[list[str], str]:
    """The model server's argv from the Deployment the controller made, pointed at a local model.

    Only what differs between the pod and this machine is replaced: where the weights and
    adapters live, the address, and (where vLLM is not installed) the engine."""
    spec = deployment["spec"]["template"]["spec"]  # type: ignore[index]
    argv = [str(a) for a in spec["containers"][0]["args"]]
    local = {"--model-dir": str(model_dir), "--port": str(port), "--host": "127.0.0.1"}
    out: list[str] = []
    engine = "transformers"
    for arg in argv:
        flag, _, value = arg.partition("=")
        if flag in local:
            out.append(f"{flag}={local.pop(flag)}")
        elif flag in ("--allow-download", "--adapter-dir", "--hf-model-id"):
            continue  # the weights are already here; the pod's adapter volume is not
        elif flag == "--engine":
            engine = value
            out.append(arg)
        else:
            out.append(arg)
    if engine == "vllm" and importlib.util.find_spec("vllm") is None:
        out = ["--engine=transformers" if a == "--engine=vllm" else a for a in out]
        engine = "transformers (vLLM is not installed here; make install-inference-cpu adds it)"
    return out, engine


def serve_like_the_pod(kubeconfig: Path, bin_dir: Path, workspace: str, logs: Path) -> None:
    """kwok simulates the GPU node, so the pod's server does not really run there. Run the same
    server with the pod's own arguments on a tiny random-weight model built offline, and talk
    to it the way the README does."""
    if importlib.util.find_spec("torch") is None:
        say("skipping the model server: torch is not installed (make install-test installs it)")
        return
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from tests.e2e.operator import free_port
    from tests.support.tinymodel import build_tiny_model
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    deployment = json.loads(kubectl(kubeconfig, bin_dir, "get", "deployment", workspace, "-o", "json"))
    model_dir = build_tiny_model(logs.parent / "demo-model")
    port = free_port()
    argv, engine = pod_server_argv(deployment, model_dir, port)
    say(f"running the pod's model server locally ({engine}) on a tiny random-weight model:")
    print("  kaitopy " + " ".join(argv), flush=True)
    log = (logs / "model-server.log").open("ab")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "kaitopy"), *argv], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the model server did not become healthy; see {logs / 'model-server.log'}")
            time.sleep(0.5)
        for path, body in (
            ("/chat", {"prompt": "What is kubernetes?", "generate_kwargs": {"max_length": 24}}),
            (
                "/v1/chat/completions",
                {
                    "model": argv_value(argv, "--served-model-name"),
                    "messages": [{"role": "user", "content": "Say hello"}],
                    "max_tokens": 8,
                    "temperature": 0,
                },
            ),
        ):
            payload = json.dumps(body)
            print(f"$ curl -X POST {base}{path} -H 'Content-Type: application/json' -d '{payload}'")
            request = urllib.request.Request(
                f"{base}{path}", data=payload.encode(), headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=60) as r:
                print(r.read().decode(), flush=True)
        say("(random weights: the words are noise; the shapes are what a real model returns)")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


def argv_value(argv: list[str], flag: str) -> str:
    return next(a.partition("=")[2] for a in argv if a.startswith(f"{flag}="))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--example", type=Path, default=DEFAULT_EXAMPLE)
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--keep-running", action="store_true", help="leave the operator running afterwards")
    ap.add_argument("--no-model", action="store_true", help="skip running the model server on a tiny model")
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

    # The operator's own namespace (webhook certificate, leases), as the manifests create it.
    kubectl(kubeconfig, bin_dir, "apply", "--server-side", "-f", str(REPO / "manifests/base/namespace.yaml"))
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
            timeout=args.timeout + 30,
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
        if not args.no_model:
            serve_like_the_pod(kubeconfig, bin_dir, name, logs)
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
