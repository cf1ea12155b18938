#!/usr/bin/env python3
"""Benchmark: kaitopy.runtime vs kopf on the same minimal controller, same control plane, same run.

The controller: for each BenchObject, ensure one ConfigMap (owned by it) and set a Ready condition.
For each N, a fresh namespace; the controller runs alone in a child process (peak RSS is its own);
the objects are bulk-created and the clock stops when every object's status is set. Then a
steady-state window (ours resyncs every object in it) counts writes. Last, an informer syncs 10,000
objects to measure sync time and bytes per cached object.

    python bench/bench_runtime.py [--sizes 1000,5000] [--kopf-cap 600] [--cache-objects 10000]

Prints a table and writes bench/results/runtime.json. Uses $KAITOPY_CLUSTER_DIR's local control plane
(started if needed, left running), or $KAITOPY_TEST_KUBECONFIG if set.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import cluster as cluster_support  # noqa: E402

from kaitopy.runtime import (  # noqa: E402
    AlreadyExists,
    Client,
    Informer,
    InformerSettings,
    Kind,
    NotFound,
    is_true,
    kinds,
)

CHILD = REPO / "bench" / "_runtime_child.py"
RESULTS = REPO / "bench" / "results" / "runtime.json"
BENCH = Kind("bench.kaitopy.dev", "v1", "BenchObject", "benchobjects")
CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "benchobjects.bench.kaitopy.dev"},
    "spec": {
        "group": "bench.kaitopy.dev",
        "scope": "Namespaced",
        "names": {"plural": "benchobjects", "singular": "benchobject", "kind": "BenchObject"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}
CREATE_CONCURRENCY = 32


def log(msg: str) -> None:
    print(f"[bench_runtime {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def bench_object(i: int, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "bench.kaitopy.dev/v1",
        "kind": "BenchObject",
        "metadata": {
            "name": f"obj-{i:05d}",
            "namespace": namespace,
            "labels": {"app": "bench", "shard": str(i % 16)},
        },
        "spec": {"size": i % 7 + 1, "image": "registry.invalid/model:1.0", "replicas": 1, "tier": "gold"},
    }


async def create_namespace(client: Client, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    await client.create(
        kinds.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    return name


async def delete_namespace(client: Client, name: str, timeout: float = 600) -> None:
    try:
        await client.delete(kinds.NAMESPACE, name)
    except NotFound:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await client.get_or_none(kinds.NAMESPACE, name) is None:
            return
        await asyncio.sleep(1)
    log(f"namespace {name} still terminating after {timeout:.0f}s; going on")


async def bulk_create(client: Client, namespace: str, n: int) -> None:
    sem = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def one(i: int) -> None:
        async with sem:
            for _attempt in range(5):
                try:
                    await client.create(BENCH, bench_object(i, namespace))
                    return
                except AlreadyExists:
                    return
                except Exception:  # a transient overload: retry, the benchmark needs every object
                    await asyncio.sleep(0.5)
            raise RuntimeError(f"could not create object {i}")

    await asyncio.gather(*(one(i) for i in range(n)))


class ReadyCounter:
    """Counts objects whose Ready condition is True, from a watch in this (the parent) process."""

    def __init__(self) -> None:
        self.ready: set[str] = set()
        self.changed = asyncio.Event()

    def _see(self, obj: Any) -> None:
        if is_true((obj.get("status") or {}).get("conditions"), "Ready"):
            self.ready.add(obj["metadata"]["name"])
            self.changed.set()

    def on_add(self, obj: Any) -> None:
        self._see(obj)

    def on_update(self, old: Any, new: Any) -> None:
        self._see(new)

    def on_delete(self, obj: Any) -> None:
        pass


class Child:
    """One controller process, with its stats file and its rusage at exit."""

    def __init__(self, role: str, kubeconfig: Path, namespace: str, workdir: Path, *extra: str) -> None:
        self.stats = workdir / f"{role}-{namespace}.json"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(CHILD),
                role,
                "--kubeconfig",
                str(kubeconfig),
                "--namespace",
                namespace,
                "--stats",
                str(self.stats),
                *extra,
            ],
            stderr=open(workdir / f"{role}-{namespace}.log", "w"),  # noqa: SIM115
        )
        self.max_rss_kib = 0

    async def wait_ready(self, timeout: float = 120) -> None:
        ready = Path(f"{self.stats}.ready")
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited early ({self.proc.returncode}); see its log")
            if time.monotonic() > deadline:
                raise RuntimeError("controller not ready in time")
            await asyncio.sleep(0.1)

    async def snapshot(self) -> dict[str, Any]:
        before = self.stats.stat().st_mtime_ns if self.stats.exists() else 0
        self.proc.send_signal(signal.SIGUSR1)
        for _ in range(200):
            await asyncio.sleep(0.05)
            if self.stats.exists() and self.stats.stat().st_mtime_ns != before:
                result: dict[str, Any] = json.loads(self.stats.read_text())
                return result
        raise RuntimeError("controller wrote no stats")

    async def stop(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.max_rss_kib = usage.ru_maxrss
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                return self.proc.returncode
            await asyncio.sleep(0.2)
        self.proc.kill()
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.max_rss_kib = usage.ru_maxrss
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        return -9


def audit_writes(audit_log: Path | None, namespace: str) -> dict[str, int]:
    """Writes the API server recorded in `namespace`, by verb and resource, excluding our bulk creates."""
    counts: dict[str, int] = {}
    if audit_log is None:
        return counts
    for path in sorted(audit_log.parent.glob(audit_log.name + "*")):
        with open(path, "rb") as f:
            for line in f:
                if namespace.encode() not in line:
                    continue
                ev = json.loads(line)
                ref = ev.get("objectRef") or {}
                if ref.get("namespace") != namespace or ev.get("stage") != "ResponseComplete":
                    continue
                if ref.get("resource") == "benchobjects" and ev["verb"] == "create":
                    continue  # the benchmark's own bulk create
                if (
                    ref.get("resource") in ("serviceaccounts", "secrets")
                    or ref.get("name") == "kube-root-ca.crt"
                ):
                    continue  # the namespace's defaults, written by kube-controller-manager
                sub = "/" + ref["subresource"] if ref.get("subresource") else ""
                key = f"{ev['verb']} {ref.get('resource')}{sub}"
                counts[key] = counts.get(key, 0) + 1
    return counts


async def run_controller(
    client: Client,
    kubeconfig: Path,
    audit_log: Path | None,
    workdir: Path,
    role: str,
    n: int,
    cap: float,
    steady_window: float,
) -> dict[str, Any]:
    ns = await create_namespace(client, f"bench-{role}")
    log(f"{role} N={n}: namespace {ns}")
    extra = ["--resync", str(steady_window / 2)] if role == "ours" else []
    child = Child(role, kubeconfig, ns, workdir, *extra)
    counter = ReadyCounter()
    watcher = Informer(client, BENCH, namespace=ns, settings=InformerSettings())
    watcher.add_handler(counter)
    watcher.start()
    result: dict[str, Any] = {"framework": role, "n": n, "namespace": ns}
    try:
        await child.wait_ready()
        await watcher.wait_synced()
        t0 = time.perf_counter()
        await bulk_create(client, ns, n)
        created_s = time.perf_counter() - t0
        log(f"{role} N={n}: created in {created_s:.1f}s, waiting for status")
        deadline = t0 + cap
        while len(counter.ready) < n and time.perf_counter() < deadline:
            counter.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(counter.changed.wait(), 1.0)
        elapsed = time.perf_counter() - t0
        done = len(counter.ready)
        capped = done < n
        log(f"{role} N={n}: {done}/{n} ready after {elapsed:.1f}s{' (CAPPED)' if capped else ''}")
        after_run = await child.snapshot()
        result.update(
            created_s=round(created_s, 2),
            ready=done,
            capped=capped,
            time_to_all_status_s=round(elapsed, 2) if not capped else None,
            elapsed_s=round(elapsed, 2),
            objects_per_s=round(done / elapsed, 1),
            reconciles=after_run["reconciles"],
            reconciles_per_s=round(after_run["reconciles"] / elapsed, 1),
            requests=after_run["requests"],
            requests_per_object=round(sum(after_run["requests"].values()) / max(done, 1), 2),
            writes_per_object=round(after_run["writes"] / max(done, 1), 2),
        )
        if not capped:
            await asyncio.sleep(3)  # let the last watch events settle
            a = await child.snapshot()
            await asyncio.sleep(steady_window)
            b = await child.snapshot()
            result["steady_state"] = {
                "window_s": steady_window,
                "reconciles": b["reconciles"] - a["reconciles"],
                "writes": b["writes"] - a["writes"],
                "requests": sum(b["requests"].values()) - sum(a["requests"].values()),
            }
            log(f"{role} N={n}: steady state {result['steady_state']}")
    finally:
        rc = await child.stop()
        await watcher.stop()
    result["exit_code"] = rc
    result["peak_rss_mib"] = round(child.max_rss_kib / 1024, 1)
    audit = audit_writes(audit_log, ns)
    if audit:
        result["audit_writes"] = audit
        result["audit_writes_per_object"] = round(sum(audit.values()) / max(result["ready"], 1), 2)
    await delete_namespace(client, ns)
    return result


async def run_cache(client: Client, kubeconfig: Path, workdir: Path, n: int) -> list[dict[str, Any]]:
    ns = await create_namespace(client, "bench-cache")
    log(f"cache: creating {n} objects in {ns}")
    t0 = time.perf_counter()
    await bulk_create(client, ns, n)
    log(f"cache: created in {time.perf_counter() - t0:.1f}s")
    out = []
    try:
        for streaming in (1, 0):
            child = Child("cache", kubeconfig, ns, workdir, "--streaming", str(streaming))
            deadline = time.monotonic() + 600
            while child.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            rc = child.proc.poll()
            if rc != 0:
                raise RuntimeError(f"cache probe failed ({rc})")
            r = json.loads(child.stats.read_text())
            r["mode"] = "streaming list (sendInitialEvents)" if r["streaming"] else "paged list (500/page)"
            out.append(r)
            log(
                f"cache: {r['mode']}: {r['objects']} objects synced in {r['sync_s']:.2f}s, "
                f"{r['bytes_per_object']:.0f} B/object"
            )
    finally:
        await delete_namespace(client, ns)
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 2)


def table(results: dict[str, Any]) -> str:
    rows = [
        (
            "N",
            "framework",
            "t(all status) s",
            "obj/s",
            "reconciles/s",
            "peak RSS MiB",
            "req/obj",
            "writes/obj",
            "steady writes",
        ),
    ]
    for r in results["controllers"]:
        ss = r.get("steady_state")
        rows.append(
            (
                str(r["n"]),
                r["framework"],
                f"{r['time_to_all_status_s']}"
                if not r["capped"]
                else f">{r['elapsed_s']} ({r['ready']} done)",
                str(r["objects_per_s"]),
                str(r["reconciles_per_s"]),
                str(r["peak_rss_mib"]),
                str(r["requests_per_object"]),
                str(r["writes_per_object"]),
                f"{ss['writes']} ({ss['reconciles']} rec/{ss['window_s']:.0f}s)" if ss else "-",
            )
        )
    for n, rat in results["ratios"].items():
        rows.append(
            (
                n,
                "ours/kopf",
                str(rat["time"]),
                str(rat["objects_per_s"]),
                str(rat["reconciles_per_s"]),
                str(rat["peak_rss"]),
                str(rat["requests_per_object"]),
                str(rat["writes_per_object"]),
                "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for c in results["cache"]:
        lines.append(
            f"cache: {c['objects']} objects, {c['mode']}: sync {c['sync_s']:.2f}s, "
            f"RSS {c['rss_before_kib'] / 1024:.0f} -> {c['rss_after_kib'] / 1024:.0f} MiB, "
            f"{c['bytes_per_object']:.0f} bytes/object"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    cluster = cluster_support.acquire()
    kubeconfig = cluster.kubeconfig
    audit_log = kubeconfig.parent / "logs" / "audit.log"
    workdir = REPO / "bench" / "results" / "runtime-work"
    workdir.mkdir(parents=True, exist_ok=True)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(CRD))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/benchobjects.bench.kaitopy.dev"
    )
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "controllers": [],
        "ratios": {},
        "cache": [],
    }
    try:
        import kopf

        results["machine"]["kopf"] = kopf.__version__ if hasattr(kopf, "__version__") else "installed"
    except ImportError:
        raise SystemExit("kopf is not installed: pip install -e '.[bench]'") from None
    async with await Client.from_kubeconfig(str(kubeconfig)) as client:
        for n in args.sizes:
            by = {}
            for role in ("ours", "kopf"):
                cap = args.cap if role == "ours" else args.kopf_cap
                r = await run_controller(
                    client,
                    kubeconfig,
                    audit_log if audit_log.exists() else None,
                    workdir,
                    role,
                    n,
                    cap,
                    args.steady_window,
                )
                results["controllers"].append(r)
                by[role] = r
            o, k = by["ours"], by["kopf"]
            results["ratios"][str(n)] = {
                "time": ratio(
                    o["time_to_all_status_s"] or o["elapsed_s"], k["time_to_all_status_s"] or k["elapsed_s"]
                ),
                "objects_per_s": ratio(o["objects_per_s"], k["objects_per_s"]),
                "reconciles_per_s": ratio(o["reconciles_per_s"], k["reconciles_per_s"]),
                "peak_rss": ratio(o["peak_rss_mib"], k["peak_rss_mib"]),
                "requests_per_object": ratio(o["requests_per_object"], k["requests_per_object"]),
                "writes_per_object": ratio(o["writes_per_object"], k["writes_per_object"]),
                "kopf_capped": k["capped"],
            }
        if args.cache_objects:
            results["cache"] = await run_cache(client, kubeconfig, workdir, args.cache_objects)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sizes", default="1000,5000", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--cap", type=float, default=900.0, help="seconds our controller may take per N")
    p.add_argument("--kopf-cap", type=float, default=600.0, help="seconds kopf may take per N")
    p.add_argument("--steady-window", type=float, default=20.0)
    p.add_argument("--cache-objects", type=int, default=10000)
    args = p.parse_args()
    results = asyncio.run(main_async(args))
    print(table(results))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
