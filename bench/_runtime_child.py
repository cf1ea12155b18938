"""Child-process side of bench_runtime.py: one controller (ours or kopf), the ceiling (the same writes
with no controller) or a cache probe per process, so that peak RSS is the controller's alone.
(controller-runtime's peer is bench/crpeer, a Go program speaking the same protocol.)

Both controllers are counted the same way: every aiohttp request the process sends (kubernetes_asyncio
and kopf both speak aiohttp) is tallied by method. SIGUSR1 writes a stats snapshot to --stats; the
parent reads it before and after the steady-state window.

    python bench/_runtime_child.py ours|kopf|ceiling|cache --kubeconfig K --namespace NS --stats FILE
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import logging
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

GROUP, VERSION, PLURAL, KIND = "bench.kaitopy.dev", "v1", "benchobjects", "BenchObject"
WRITES = ("POST", "PUT", "PATCH", "DELETE")


class Tally:
    """What the process did: HTTP requests by method, reconciles (handler calls)."""

    def __init__(self) -> None:
        self.requests: collections.Counter[str] = collections.Counter()
        self.reconciles = 0

    def install(self) -> None:
        original = aiohttp.ClientSession._request
        tally = self

        async def counted(session: aiohttp.ClientSession, method: str, *args: Any, **kwargs: Any) -> Any:
            tally.requests[method.upper()] += 1
            return await original(session, method, *args, **kwargs)

        aiohttp.ClientSession._request = counted  # type: ignore[method-assign]

    def snapshot(self) -> dict[str, Any]:
        status = _proc_status()
        return {
            "time": time.monotonic(),
            "requests": dict(self.requests),
            "writes": sum(self.requests[m] for m in WRITES),
            "reconciles": self.reconciles,
            "vm_hwm_kib": status.get("VmHWM", 0),
            "vm_rss_kib": status.get("VmRSS", 0),
        }

    def dump(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.snapshot()))
        tmp.replace(path)


def _proc_status() -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[key] = int(value.split()[0])
    return out


def ready_condition(generation: int) -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": "True",
        "reason": "ConfigMapEnsured",
        "message": "",
        "observedGeneration": generation,
        "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def config_map_for(name: str, namespace: str, spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": {"bench": "runtime"}},
        "data": {"size": str(spec.get("size", 0)), "image": str(spec.get("image", ""))},
    }


# -- our library ----------------------------------------------------------------------------------
async def run_ours(args: argparse.Namespace, tally: Tally) -> None:
    from kaitopy.runtime import (
        Client,
        ControllerSettings,
        Kind,
        Manager,
        ManagerSettings,
        Request,
        Result,
        create_or_update,
        find_condition,
        kinds,
        patch_status,
        predicates,
        set_controller_reference,
    )

    bench_kind = Kind(GROUP, VERSION, KIND, PLURAL)
    async with await Client.from_kubeconfig(args.kubeconfig) as client:
        mgr = Manager(client, ManagerSettings(probe_port=None))
        objects = mgr.cache.store(bench_kind, namespace=args.namespace)
        config_maps = mgr.cache.store(kinds.CONFIG_MAP, namespace=args.namespace)

        async def reconcile(req: Request) -> Result | None:
            tally.reconciles += 1
            obj = objects.get(req.key)
            if obj is None:
                return None
            desired = set_controller_reference(obj, config_map_for(req.name, req.namespace, obj["spec"]))
            await create_or_update(client, kinds.CONFIG_MAP, desired, current=config_maps.get(req.key))
            generation = obj["metadata"]["generation"]
            cond = find_condition((obj.get("status") or {}).get("conditions"), "Ready")
            if cond is None or cond.get("observedGeneration") != generation:
                await patch_status(client, bench_kind, obj, {"conditions": [ready_condition(generation)]})
            return None

        (
            mgr.controller("bench")
            .for_(bench_kind, namespace=args.namespace, predicates=[predicates.generation_changed()])
            # The creation of a ConfigMap we just created carries no news; changes and deletions do.
            .owns(
                kinds.CONFIG_MAP,
                namespace=args.namespace,
                predicates=[predicates.funcs(create=lambda _obj: False)],
            )
            .with_settings(
                ControllerSettings(max_concurrent_reconciles=args.workers, resync_period=args.resync)
            )
            .build(reconcile)
        )
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, tally.dump, args.stats)
        run = asyncio.create_task(mgr.run())
        await mgr.wait_running()
        Path(f"{args.stats}.ready").touch()
        await run


# -- kopf -----------------------------------------------------------------------------------------
def run_kopf(args: argparse.Namespace, tally: Tally) -> None:
    import kopf
    from kubernetes_asyncio import client as k8s
    from kubernetes_asyncio import config as k8s_config

    os.environ["KUBECONFIG"] = args.kubeconfig
    registry = kopf.OperatorRegistry()
    apis: dict[str, k8s.CoreV1Api] = {}

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Events only for warnings: kopf's default INFO events would add a write per handler run.
        settings.posting.level = logging.WARNING
        cfg = k8s.Configuration()
        await k8s_config.load_kube_config(config_file=args.kubeconfig, client_configuration=cfg)
        apis["core"] = k8s.CoreV1Api(k8s.ApiClient(configuration=cfg))
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, tally.dump, args.stats)

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    async def ensure(
        spec: Any, name: str, namespace: str, meta: Any, body: Any, patch: Any, **_: Any
    ) -> None:
        tally.reconciles += 1
        cm = config_map_for(name, namespace, spec)
        kopf.adopt(cm, owner=body)
        try:
            await apis["core"].create_namespaced_config_map(namespace, cm)
        except k8s.ApiException as exc:
            if exc.status != 409:
                raise
        patch.status["conditions"] = [ready_condition(meta["generation"])]

    async def main() -> None:
        ready = asyncio.Event()

        async def mark_ready() -> None:
            await ready.wait()
            Path(f"{args.stats}.ready").touch()

        marker = asyncio.create_task(mark_ready())
        await kopf.operator(registry=registry, standalone=True, namespaces=[args.namespace], ready_flag=ready)
        marker.cancel()

    kopf.configure(quiet=True)
    asyncio.run(main())


# -- the ceiling ---------------------------------------------------------------------------------
async def run_ceiling(args: argparse.Namespace, tally: Tally) -> None:
    """No controller: one paged list, then exactly the controllers' writes (create the owned
    ConfigMap, merge-patch the Ready condition) with as many in flight as the controllers' workers.
    What this takes is the API server's limit on this machine for these writes."""
    from kaitopy.runtime import Client, Kind, kinds, set_controller_reference

    bench_kind = Kind(GROUP, VERSION, KIND, PLURAL)
    async with await Client.from_kubeconfig(args.kubeconfig) as client:
        await client.request("GET", "/version")  # connection and TLS set up, as the controllers' are
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, tally.dump, args.stats)
        Path(f"{args.stats}.ready").touch()
        objects = (await client.list(bench_kind, args.namespace)).items
        sem = asyncio.Semaphore(args.workers)

        async def one(obj: dict[str, Any]) -> None:
            meta = obj["metadata"]
            async with sem:
                tally.reconciles += 1
                desired = set_controller_reference(
                    obj, config_map_for(meta["name"], meta["namespace"], obj["spec"])
                )
                await client.create(kinds.CONFIG_MAP, desired)
                await client.patch_status(
                    bench_kind,
                    meta["name"],
                    {"status": {"conditions": [ready_condition(meta["generation"])]}},
                    namespace=meta["namespace"],
                )

        await asyncio.gather(*(one(o) for o in objects))


# -- the cache probe ------------------------------------------------------------------------------
async def run_cache(args: argparse.Namespace, tally: Tally) -> None:
    from kaitopy.runtime import Client, Informer, InformerSettings, Kind

    bench_kind = Kind(GROUP, VERSION, KIND, PLURAL)
    async with await Client.from_kubeconfig(args.kubeconfig) as client:
        await client.request("GET", "/version")  # connection and TLS set up before the baseline
        gc.collect()
        before = _proc_status()["VmRSS"]
        inf = Informer(
            client,
            bench_kind,
            namespace=args.namespace,
            settings=InformerSettings(streaming_list=args.streaming),
        )
        start = time.perf_counter()
        inf.start()
        await inf.wait_synced()
        sync_s = time.perf_counter() - start
        gc.collect()
        after = _proc_status()
        n = len(inf.store)
        result = {
            "objects": n,
            "streaming": inf._streaming,
            "sync_s": sync_s,
            "rss_before_kib": before,
            "rss_after_kib": after["VmRSS"],
            "hwm_kib": after["VmHWM"],
            "bytes_per_object": (after["VmRSS"] - before) * 1024 / max(n, 1),
            "requests": dict(tally.requests),
        }
        await inf.stop()
        Path(args.stats).write_text(json.dumps(result))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=("ours", "kopf", "ceiling", "cache"))
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--stats", required=True, type=Path)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--resync", type=float, default=36000.0)
    p.add_argument("--streaming", type=int, default=1)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    tally = Tally()
    tally.install()
    if args.role == "ours":
        asyncio.run(run_ours(args, tally))
    elif args.role == "kopf":
        run_kopf(args, tally)
    elif args.role == "ceiling":
        asyncio.run(run_ceiling(args, tally))
    else:
        asyncio.run(run_cache(args, tally))
    if args.role != "cache":
        tally.dump(args.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
