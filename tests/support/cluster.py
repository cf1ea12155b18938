"""Test access to a real control plane: the local one from hack/localcluster.py, or any cluster
named by $KAITOPY_TEST_KUBECONFIG."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCALCLUSTER = REPO / "hack" / "localcluster.py"


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    bin_dir: Path | None  # where kubectl and friends are, for the local cluster
    started_here: bool

    def kubectl_argv(self) -> list[str]:
        exe = str(self.bin_dir / "kubectl") if self.bin_dir else "kubectl"
        return [exe, f"--kubeconfig={self.kubeconfig}"]

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        proc = subprocess.run(
            [*self.kubectl_argv(), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc.stdout + (proc.stderr if not check else "")


def _local(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LOCALCLUSTER), command], capture_output=True, text=True, timeout=3600
    )


def acquire() -> Cluster:
    given = os.environ.get("KAITOPY_TEST_KUBECONFIG")
    if given:
        return Cluster(Path(given), None, started_here=False)
    was_running = _local("status").returncode == 0
    proc = _local("up")
    if proc.returncode != 0:
        raise RuntimeError(f"hack/localcluster.py up failed:\n{proc.stderr}")
    kubeconfig = Path(proc.stdout.strip().splitlines()[-1])
    state = json.loads((kubeconfig.parent / "state.json").read_text())
    return Cluster(kubeconfig, Path(state["bin_dir"]), started_here=not was_running)


def release(cluster: Cluster) -> None:
    if cluster.started_here and os.environ.get("KAITOPY_KEEP_CLUSTER") != "1":
        _local("down")
