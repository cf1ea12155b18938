#!/usr/bin/env python3
"""Workspace controller at scale on the local control plane (kwok provider, no launch delay).

For N workspaces applied at once: time until every one is WorkspaceSucceeded, API requests per
workspace by HTTP method (controller and provisioner, from their rest_client_requests_total) and
by Kubernetes verb and resource (rest_client_requests_by_resource_total), peak RSS
of each process, and the writes made by a following resync (must be zero).

    python bench/bench_workspace.py [--sizes 200,1000] [--timeout 1200]

Prints a table and writes bench/results/workspace.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e.operator import WRITE_METHODS, Operator, Process, ensure_operator_namespace, sum_of  # noqa: E402

from kaitopy.runtime import Client, Kind, kinds  # noqa: E402

WORKSPACE = Kind("kaito.sh", "v1beta1", "Workspace", "workspaces")
NODECLAIM = Kind("karpenter.sh", "v1", "NodeClaim", "nodeclaims", namespaced=False)
VERBS = ("GET", "LIST", "WATCH", "POST", "PUT", "PATCH", "DELETE")


def peak_rss_mib(p: Process) -> float:
    assert p.proc is not None
    for line in Path(f"/proc/{p.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def requests_by_verb(p: Process) -> dict[str, float]:
    samples = p.samples()  # one scrape for all verbs
    return {v: sum_of(samples, "rest_client_requests_total", method=v) for v in VERBS}


EVENT_RESOURCES = ("events.events.k8s.io", "events")
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")


def writes_apart_from_events(p: Process) -> tuple[float, float]:
    """(object writes, Event writes) so far. The event recorder writes from its own queue, so an
    Event recorded just before all-Ready may still go out during the resync window: it is not a
    write the resync made, and is counted apart."""
    objects = events = 0.0
    for name, labels, value in p.samples():
        if name == "rest_client_requests_by_resource_total" and labels["verb"] in WRITE_VERBS:
            if labels["resource"] in EVENT_RESOURCES:
                events += value
            else:
                objects += value
    return objects, events


def requests_by_resource(p: Process, n: int) -> dict[str, float]:
    """Requests per workspace by Kubernetes verb and resource ("get workspaces.kaito.sh"), which
    names the read or write a change added; empty for a build without the counter."""
    counts: dict[str, float] = {}
    for name, labels, value in p.samples():
        if name == "rest_client_requests_by_resource_total" and value:
            key = f"{labels['verb']} {labels['resource'] or '(non-resource)'}"
            counts[key] = counts.get(key, 0.0) + value
    return {k: round(v / n, 2) for k, v in sorted(counts.items())}


async def apiserver_seconds(client: Client) -> dict[str, float]:
    """Seconds the API server spent answering each verb and resource so far (the sum of its
    apiserver_request_duration_seconds), from its /metrics: where its CPU, the machine's largest
    share, went."""
    text = (await client.request_bytes("GET", "/metrics")).decode()
    spent: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "apiserver_request_duration_seconds_sum" and s.labels.get("verb") != "WATCH":
                key = f"{s.labels['verb']} {s.labels.get('resource') or '(non-resource)'}"
                if s.labels.get("subresource"):
                    key += "/" + s.labels["subresource"]
                spent[key] = spent.get(key, 0.0) + s.value
    return spent


def top_spent(before: dict[str, float], after: dict[str, float], n: int = 8) -> dict[str, float]:
    spent = {k: v - before.get(k, 0.0) for k, v in after.items()}
    return {k: round(v, 1) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])[:n]}


def loop_lag(p: Process) -> dict[str, float]:
    """Upper bounds of the event loop's p99 and worst lag, from the event_loop_lag_seconds buckets."""
    buckets = sorted(
        (float(labels["le"]), value)
        for name, labels, value in p.samples()
        if name == "event_loop_lag_seconds_bucket"
    )
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return {}
    p99 = next(le for le, count in buckets if count >= 0.99 * total)
    worst = next(le for le, count in buckets if count >= total)
    return {"p99_le_s": p99, "max_le_s": worst}


def workspace(i: int, ns: str) -> dict[str, Any]:
    name = f"phi-{i:05d}"
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": ns},
        "resource": {"instanceType": "Standard_NC6s_v3", "labelSelector": {"matchLabels": {"apps": name}}},
        "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
    }


def succeeded(ws: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "WorkspaceSucceeded" and c.get("status") == "True"
        for c in (ws.get("status") or {}).get("conditions") or ()
    )


async def run_size(client: Client, kubeconfig: Path, n: int, timeout: float, workdir: Path) -> dict[str, Any]:
    ns = f"bench-{n}-{int(time.time())}"
    await client.create(kinds.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    op = Operator(kubeconfig, workdir)
    op.start_provisioner("--max-concurrent-reconciles=20")
    ctrl = op.start_controller("--max-concurrent-reconciles=20", "--resync-period=20")
    assert op.provisioner is not None
    result: dict[str, Any] = {"workspaces": n}
    try:
        spent_before = await apiserver_seconds(client)
        t0 = time.monotonic()
        sem = asyncio.Semaphore(32)

        async def create(i: int) -> None:
            async with sem:
                await client.create(WORKSPACE, workspace(i, ns))

        await asyncio.gather(*(create(i) for i in range(n)))
        result["apply_s"] = round(time.monotonic() - t0, 2)
        while True:
            items = (await client.list(WORKSPACE, namespace=ns)).items
            done = sum(1 for w in items if succeeded(w))
            if done == n:
                break
            if time.monotonic() - t0 > timeout:
                result["timed_out_with_ready"] = done
                break
            await asyncio.sleep(1.0)
        result["all_ready_s"] = round(time.monotonic() - t0, 2)
        result["apiserver_seconds_top"] = top_spent(spent_before, await apiserver_seconds(client))
        result["ready_per_s"] = round(n / result["all_ready_s"], 2)
        await asyncio.sleep(3.0)  # trailing status writes
        ctrl_req, prov_req = requests_by_verb(ctrl), requests_by_verb(op.provisioner)
        result["controller_requests_per_workspace"] = {v: round(c / n, 2) for v, c in ctrl_req.items() if c}
        result["provisioner_requests_per_workspace"] = {v: round(c / n, 2) for v, c in prov_req.items() if c}
        result["controller_requests_by_resource"] = requests_by_resource(ctrl, n)
        result["provisioner_requests_by_resource"] = requests_by_resource(op.provisioner, n)
        writes_before, events_before = writes_apart_from_events(ctrl)
        reconciles_before = ctrl.metric("controller_runtime_reconcile_total", controller="workspace")
        await asyncio.sleep(25.0)  # past one resync period (20 s + jitter)
        result["resync_reconciles"] = int(
            ctrl.metric("controller_runtime_reconcile_total", controller="workspace") - reconciles_before
        )
        writes_after, events_after = writes_apart_from_events(ctrl)
        result["resync_writes"] = int(writes_after - writes_before)
        result["resync_event_writes"] = int(events_after - events_before)
        result["controller_loop_lag"] = loop_lag(ctrl)
        result["provisioner_loop_lag"] = loop_lag(op.provisioner)
        result["controller_peak_rss_mib"] = round(peak_rss_mib(ctrl), 1)
        result["provisioner_peak_rss_mib"] = round(peak_rss_mib(op.provisioner), 1)
    finally:
        # Delete everything (and so every node) before the next size.
        for w in (await client.list(WORKSPACE, namespace=ns)).items:
            await client.delete(WORKSPACE, w["metadata"]["name"], namespace=ns)
        deadline = time.monotonic() + timeout
        while (await client.list(NODECLAIM, label_selector=f"kaito.sh/workspacenamespace={ns}")).items:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(2.0)
        op.stop()
        await client.delete(kinds.NAMESPACE, ns)
    return result


async def bench(args: argparse.Namespace, kubeconfig: Path) -> int:
    workdir = REPO / "bench" / "results" / "workspace-logs"
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    client = await Client.from_kubeconfig(str(kubeconfig))
    async with client:
        await ensure_operator_namespace(client)
        for n in (int(s) for s in args.sizes.split(",")):
            print(f"== {n} workspaces", flush=True)
            results.append(await run_size(client, kubeconfig, n, args.timeout, workdir))
            print(json.dumps(results[-1], indent=2), flush=True)
    print()
    print(
        f"{'N':>6} {'all ready s':>12} {'ready/s':>8} {'ctrl req/ws':>12} {'prov req/ws':>12} "
        f"{'ctrl RSS MiB':>13} {'resync writes':>14}"
    )
    for r in results:
        ctrl = sum(r.get("controller_requests_per_workspace", {}).values())
        prov = sum(r.get("provisioner_requests_per_workspace", {}).values())
        print(
            f"{r['workspaces']:>6} {r['all_ready_s']:>12} {r['ready_per_s']:>8} {ctrl:>12.1f} {prov:>12.1f} "
            f"{r.get('controller_peak_rss_mib', 0):>13} {r.get('resync_writes', -1):>14}"
        )
    out = REPO / "bench" / "results" / "workspace.json"
    out.write_text(json.dumps({"results": results, "write_methods": WRITE_METHODS}, indent=2))
    print(f"\nwrote {out}")
    return 0 if all(r.get("resync_writes") == 0 and "timed_out_with_ready" not in r for r in results) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="200,1000")
    ap.add_argument("--timeout", type=float, default=1200.0)
    args = ap.parse_args()
    up = subprocess.run(
        [sys.executable, str(REPO / "hack" / "localcluster.py"), "up"],
        capture_output=True,
        text=True,
        check=True,
    )
    return asyncio.run(bench(args, Path(up.stdout.strip().splitlines()[-1])))


if __name__ == "__main__":
    sys.exit(main())
