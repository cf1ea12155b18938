"""bench/bench_runtime.py runs end to end at a tiny N (a smoke test of the harness, not a benchmark:
nothing here is timed). Only the peers CI always has: ours and the ceiling (kopf is the `bench` extra;
controller-runtime's first build takes minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.cluster import Cluster

REPO = Path(__file__).resolve().parents[3]


def test_bench_runtime_harness_runs_at_tiny_n(kube_cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "runtime.json"
    env = {**os.environ, "KAITOPY_TEST_KUBECONFIG": str(kube_cluster.kubeconfig)}
    argv = [sys.executable, str(REPO / "bench" / "bench_runtime.py"), "--sizes", "20", "--rounds", "1"]
    argv += ["--modes", "backlog", "--frameworks", "ours,ceiling", "--cache-objects", "0", "--out", str(out)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    runs = {r["framework"]: r for r in results["runs"]}
    assert set(runs) == {"ours", "ceiling"}
    for name, run in runs.items():
        assert run["ready"] == 20 and not run["capped"], name
        assert run["exit_code"] == 0, name
        # The same writes from both: one ConfigMap create and one status patch per object.
        assert run["requests"].get("POST", 0) == 20 and run["requests"].get("PATCH", 0) == 20, run["requests"]
        assert run["peak_rss_mib"] > 0 and run["operator_cpu_s_total"] > 0, name
        if results["machine"]["control_plane_pids_known"]:
            assert run["cpu_s"]["kube-apiserver"] > 0, run["cpu_s"]
    assert {(r["framework"], r["rounds"]) for r in results["summary"]} == {("ours", 1), ("ceiling", 1)}
    assert "ours_over_ceiling_throughput" in results["goals"]["20 backlog"]
    assert "ceiling" in proc.stdout and "goals 20 backlog" in proc.stdout
