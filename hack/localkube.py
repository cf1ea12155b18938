"""kubectl from the local control plane's binary cache, for the hack/ scripts that drive it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def bin_dir_of(kubeconfig: Path) -> Path:
    """Where the cluster next to this kubeconfig keeps its binaries (its state.json says)."""
    return Path(json.loads((kubeconfig.parent / "state.json").read_text())["bin_dir"])


def kubectl(
    kubeconfig: Path,
    bin_dir: Path,
    *args: str,
    input: str | None = None,
    check: bool = True,
    timeout: float = 120,
) -> str:
    """stdout of kubectl; exits with its stderr when it fails (unless check=False)."""
    proc = subprocess.run(
        [str(bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout
