"""The operator as its users run it: `kaitopy controller` and `kaitopy provisioner` as separate
processes against the control plane, which tests can stop, kill and restart."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from kaitopy.runtime import AlreadyExists, Client, kinds
from tests.support.cluster import Cluster

KAITOPY = [sys.executable, "-m", "kaitopy"]
REPO = Path(__file__).resolve().parents[2]
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


OPERATOR_NAMESPACE = "kaito-system"
WEBHOOK_CONFIGURATION = "kaitopy-workspace-validation"


async def ensure_operator_namespace(client: Client) -> None:
    """The operator's own namespace (webhook certificate, leases), as manifests/base creates it;
    harnesses that run the operator on a fresh cluster need it first."""
    with contextlib.suppress(AlreadyExists):
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}}
        await client.create(kinds.NAMESPACE, body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sum_of(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, ls, v in samples if n == name and all(ls.get(k) == w for k, w in labels.items()))


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    probe_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    # Where /readyz and /metrics are served: loopback, or the API server's bridge address when a
    # real Prometheus must find the process through an EndpointSlice (tests/support/prometheus.py).
    host: str = "127.0.0.1"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.argv, f"--probe-address={self.host}:{self.probe_port}"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.logs()}")
            if self._ready():
                return
            time.sleep(0.2)
        raise AssertionError(f"{self.name} not ready within 60s:\n{self.logs()}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.probe_port}/readyz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> int:
        """SIGTERM, as Kubernetes stops a pod; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"{self.name} ignored SIGTERM for 40s:\n{self.logs()}") from None

    def kill(self) -> None:
        """SIGKILL: no cleanup, nothing finished."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def samples(self, timeout: float = 30.0) -> list[tuple[str, dict[str, str], float]]:
        """Every sample the process exports now: (name, labels, value). The timeout is generous:
        on a machine shared with a loaded control plane a busy process answers late."""
        with urllib.request.urlopen(f"http://{self.host}:{self.probe_port}/metrics", timeout=timeout) as r:
            text = r.read().decode()
        return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include `labels`."""
        return sum_of(self.samples(), name, **labels)

    def writes(self) -> float:
        samples = self.samples()
        return sum(sum_of(samples, "rest_client_requests_total", method=m) for m in WRITE_METHODS)


@dataclass
class Operator:
    kubeconfig: Path
    log_dir: Path
    provisioner_kubeconfig: Path | None = None
    controller_args: list[str] = field(default_factory=list)
    provisioner_args: list[str] = field(default_factory=list)
    controller: Process | None = None
    provisioner: Process | None = None
    admin: Cluster | None = None
    """Set when the processes run as the shipped ServiceAccounts: they are then started as the
    manifests start them (--no-install-crds, --no-install-webhook-configuration), and the webhook
    configuration of manifests/base/webhook.yaml is applied with this cluster's (admin) kubeconfig, pointed
    at a loopback URL, as the CRDs are by the fixture."""
    webhook_port: int = field(default_factory=free_port)
    probe_host: str = "127.0.0.1"

    def _env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig or self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        env.pop("KAITOPY_LEADER_ELECT", None)
        return env

    def start_provisioner(self, *extra: str) -> Process:
        self.provisioner = Process(
            "provisioner",
            [
                *KAITOPY,
                "provisioner",
                # The last --cloud-provider wins: start_local_provisioner passes its own.
                "--cloud-provider=kwok",
                "--poll-interval=0.5",
                *self.provisioner_args,
                *extra,
            ],
            self._env(self.provisioner_kubeconfig),
            self.log_dir / "provisioner.log",
            host=self.probe_host,
        )
        self.provisioner.start()
        return self.provisioner

    def start_local_provisioner(
        self, local_dir: Path, cluster_dir: Path, bin_dir: Path, pause_image: str, registry: str, *extra: str
    ) -> Process:
        """The provisioner with the `local` provider: real kubelet + containerd nodes here, their
        identities signed by the local control plane's CA (in `cluster_dir`)."""
        pki = cluster_dir / "pki"
        return self.start_provisioner(
            "--cloud-provider=local",
            f"--local-dir={local_dir}",
            f"--local-bin-dir={bin_dir}",
            f"--local-ca={pki / 'ca.crt'},{pki / 'ca.key'}",
            f"--local-pause-image={pause_image}",
            f"--local-insecure-registry={registry}",
            # Node loss (tests/e2e/test_local_model.py): noticed within seconds, not the default 30.
            "--liveness-interval=2",
            *extra,
        )

    def start_azure_provisioner(self, arm_url: str, ca: Path, *extra: str) -> Process:
        """The provisioner with the azure provider, talking to an ARM-shaped test server
        (tests/chaos/azure_provisioner.py: the real process wiring, a test credential)."""
        self.provisioner = Process(
            "provisioner",
            [
                sys.executable,
                "-m",
                "tests.chaos.azure_provisioner",
                f"--arm-url={arm_url}",
                f"--ca={ca}",
                "--poll-interval=0.5",
                *self.provisioner_args,
                *extra,
            ],
            # `-m tests....` needs the repository on the path whatever the caller's directory.
            {
                **self._env(self.provisioner_kubeconfig),
                "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH")))),
            },
            self.log_dir / "provisioner.log",
        )
        self.provisioner.start()
        return self.provisioner

    def start_controller(self, *extra: str) -> Process:
        if self.admin is None:
            webhook = ["--webhook-port=0", "--webhook-url=https://127.0.0.1:{port}/validate"]
        else:
            url = f"https://127.0.0.1:{self.webhook_port}/validate"
            self._apply_webhook_configuration(url)
            webhook = [
                f"--webhook-port={self.webhook_port}",
                f"--webhook-url={url}",
                "--no-install-crds",
                "--no-install-webhook-configuration",
            ]
        self.controller = Process(
            "controller",
            [*KAITOPY, "controller", *webhook, *self.controller_args, *extra],
            self._env(),
            self.log_dir / "controller.log",
            host=self.probe_host,
        )
        self.controller.start()
        return self.controller

    def stop(self) -> None:
        for p in (self.controller, self.provisioner):
            if p is not None:
                p.stop()
        if self.admin is not None:
            # Fail closed with no server behind it would refuse every later Workspace create.
            self._kubectl(
                "delete", "validatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "--ignore-not-found"
            )

    def _kubectl(self, *args: str, input: str | None = None) -> None:
        assert self.admin is not None
        self.admin.kubectl(*args, input=input)

    def _apply_webhook_configuration(self, url: str) -> None:
        """The shipped configuration, as an installation has it, but calling this loopback URL."""
        docs = yaml.safe_load_all((REPO / "manifests" / "base" / "webhook.yaml").read_text())
        config = next(d for d in docs if d["kind"] == "ValidatingWebhookConfiguration")
        for hook in config["webhooks"]:
            hook["clientConfig"] = {"url": url}
        self._kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(config))

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name} ---\n{p.logs()}" for p in (self.controller, self.provisioner) if p is not None
        )
