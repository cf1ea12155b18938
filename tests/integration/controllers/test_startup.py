"""Start-up failures of the operator's processes: exit code 2 and one message that says the fix."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.cluster import Cluster

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "argv",
    [
        ["controller", "--webhook-port=0", "--webhook-url=https://127.0.0.1:{port}/validate"],
        ["controller", "--no-webhook", "--leader-elect"],
        ["provisioner", "--cloud-provider=kwok", "--leader-elect"],
    ],
    ids=["controller-webhook", "controller-lease", "provisioner-lease"],
)
def test_a_missing_operator_namespace_is_a_clear_startup_error(
    kube_cluster: Cluster, argv: list[str]
) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kaitopy",
            *argv,
            f"--kubeconfig={kube_cluster.kubeconfig}",
            "--leader-election-namespace=no-such-operator-ns",
            "--probe-address=off",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "namespace 'no-such-operator-ns' does not exist" in proc.stderr
    assert "kubectl create namespace no-such-operator-ns" in proc.stderr
    assert "Traceback" not in proc.stderr
