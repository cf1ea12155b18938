"""hack/localcluster.py: `up` twice leaves one cluster; `down` leaves no process and no port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.support.cluster import LOCALCLUSTER, Cluster


def run(cmd: str, cluster_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAITOPY_CLUSTER_DIR": str(cluster_dir)}
    return subprocess.run(
        [sys.executable, str(LOCALCLUSTER), cmd], env=env, capture_output=True, text=True, timeout=300
    )


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex((host, port)) == 0


def test_up_is_idempotent_and_down_cleans_up(tmp_path: Path, kube_cluster: Cluster) -> None:
    # kube_cluster only makes sure the binaries exist; this test runs a second, private cluster.
    cluster_dir = tmp_path / "second"
    first = run("up", cluster_dir)
    assert first.returncode == 0, first.stderr
    state = json.loads((cluster_dir / "state.json").read_text())
    try:
        second = run("up", cluster_dir)
        assert second.returncode == 0, second.stderr
        assert "reusing the running cluster" in second.stderr
        assert json.loads((cluster_dir / "state.json").read_text())["pids"] == state["pids"]
        assert run("status", cluster_dir).returncode == 0
        # The API server listens on the project's API link when run as root, else on loopback.
        ports = [
            (state["ports"]["apiserver"], state["api_host"]),
            (state["ports"]["etcd"], "127.0.0.1"),
            (state["ports"]["etcd_peer"], "127.0.0.1"),
        ]
        assert all(port_in_use(p, h) for p, h in ports)
    finally:
        down = run("down", cluster_dir)
    assert down.returncode == 0, down.stderr
    for name, pid in state["pids"].items():
        assert (
            not Path(f"/proc/{pid}").exists() or b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()
        ), name
    assert not any(port_in_use(p, h) for p, h in ports)
    assert not cluster_dir.exists()
    assert run("status", cluster_dir).returncode == 1
