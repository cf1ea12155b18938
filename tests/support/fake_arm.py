"""A local HTTPS server that answers the AKS agent-pool part of Azure Resource Manager with the
real API's shapes, for testing the azure provider through the real `azure-mgmt-containerservice`
client: PUT answers 201 with an `Azure-AsyncOperation` header, the operation is polled until it
reaches Succeeded/Failed/Canceled, GET of a missing pool is a 404 `NotFound` error body, DELETE is
202 and the pool sits in `Deleting` before it disappears.

When a pool succeeds the server calls `on_pool_ready(pool)` (tests create the AKS-shaped Node
there); when a pool is deleted it calls `on_pool_deleted(pool)`. Faults are injected through
`Behavior`: quota per VM size, unavailable SKUs, throttling, transient 5xx, operations that
never finish (until the fault is cleared).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.tls import ServerCert

POOL_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
CLUSTER_PATH = (
    "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerService/managedClusters/{cluster}"
)
PoolHook = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Behavior:
    create_seconds: float = 0.3
    delete_seconds: float = 0.2
    # VM size -> how many more pools of that size the subscription's quota allows.
    quota: dict[str, int] = field(default_factory=dict)
    unavailable_skus: set[str] = field(default_factory=set)
    # Sizes whose allocation fails in the region (capacity, not quota).
    no_capacity_skus: set[str] = field(default_factory=set)
    throttle_next: int = 0  # the next N requests get 429 with Retry-After
    throttle_retry_after_s: int = 1
    fail_next_5xx: int = 0
    # The next N agent-pool PUTs meet a cluster busy with another operation (an upgrade): 409.
    cluster_busy_next: int = 0
    # The next N requests get no answer for this long (a hung connection, as an overloaded front end).
    stall_next: int = 0
    stall_seconds: float = 0.0
    # While set, no operation finishes (creates and deletes stay InProgress); clearing it lets the
    # ones waiting go on, as a backend that recovers would.
    operations_never_finish: bool = False


@dataclass
class Operation:
    id: str
    kind: str  # "create" | "delete"
    pool: str
    status: str = "InProgress"
    error: dict[str, str] | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None


def arm_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


class FakeArm:
    def __init__(
        self,
        cert: ServerCert,
        *,
        subscription: str = "00000000-0000-0000-0000-000000000001",
        resource_group: str = "kaitopy-rg",
        cluster: str = "kaitopy-aks",
        location: str = "eastus",
        behavior: Behavior | None = None,
        on_pool_ready: PoolHook | None = None,
        on_pool_deleted: PoolHook | None = None,
    ) -> None:
        self.cert = cert
        self.subscription = subscription
        self.resource_group = resource_group
        self.cluster = cluster
        self.location = location
        self.behavior = behavior or Behavior()
        self.on_pool_ready = on_pool_ready
        self.on_pool_deleted = on_pool_deleted
        self.pools: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, Operation] = {}
        self.requests: Counter[tuple[str, str]] = Counter()  # (method, pool or kind) -> count
        self.created_total: Counter[str] = Counter()  # pool -> accepted PUTs that created it
        self.request_times: list[float] = []  # monotonic time of every authenticated request
        self.calls: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.throttled_times: list[float] = []  # monotonic time of every 429 answered
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self.errors: list[str] = []  # what an operation's task (a hook, say) raised
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._faults])
        cluster = CLUSTER_PATH.format(sub="{sub}", rg="{rg}", cluster="{cluster}")
        app.router.add_put(cluster + "/agentPools/{pool}", self._put_pool)
        app.router.add_get(cluster + "/agentPools/{pool}", self._get_pool)
        app.router.add_delete(cluster + "/agentPools/{pool}", self._delete_pool)
        app.router.add_get(cluster + "/agentPools", self._list_pools)
        ops = "/subscriptions/{sub}/providers/Microsoft.ContainerService/locations/{loc}"
        app.router.add_get(ops + "/operations/{op}", self._get_operation)
        app.router.add_get(ops + "/operationresults/{op}", self._get_operation_result)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        # After go_offline the same port again: clients hold the URL.
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.cert.server_context())
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def go_offline(self) -> None:
        """An outage: the port closes and open connections drop; pools and their operations
        live on, as Azure's would, and go_online serves them again on the same port."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def go_online(self) -> None:
        if self._runner is None:
            await self.start()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    # -- faults and auth -----------------------------------------------------------------------

    @web.middleware
    async def _faults(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.calls.append((request.method, request.path))
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return arm_error(
                401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing."
            )
        if "api-version" not in request.query:
            return arm_error(
                400, "MissingApiVersionParameter", "The api-version query parameter is required."
            )
        self.request_times.append(time.monotonic())
        if self.behavior.throttle_next > 0:
            self.behavior.throttle_next -= 1
            self.requests[(request.method, "throttled")] += 1
            self.throttled_times.append(time.monotonic())
            return arm_error(
                429,
                "TooManyRequests",
                "Too many requests; retry later.",
                {"Retry-After": str(self.behavior.throttle_retry_after_s)},
            )
        if self.behavior.stall_next > 0:
            self.behavior.stall_next -= 1
            self.requests[(request.method, "stalled")] += 1
            await asyncio.sleep(self.behavior.stall_seconds)
        if self.behavior.fail_next_5xx > 0:
            self.behavior.fail_next_5xx -= 1
            self.requests[(request.method, "5xx")] += 1
            return arm_error(500, "InternalServerError", "An internal error occurred; retry the request.")
        return await handler(request)

    def _check_cluster(self, request: web.Request) -> web.Response | None:
        m = request.match_info
        if (m["sub"], m["rg"].lower(), m["cluster"]) != (
            self.subscription,
            self.resource_group.lower(),
            self.cluster,
        ):
            return arm_error(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.ContainerService/managedClusters/{m['cluster']}' under resource group '{m['rg']}' was not found.",
            )
        return None

    # -- agent pools ---------------------------------------------------------------------------

    def _pool_id(self, name: str) -> str:
        return (
            CLUSTER_PATH.format(sub=self.subscription, rg=self.resource_group, cluster=self.cluster)
            + f"/agentPools/{name}"
        )

    def _operation_url(self, op: Operation) -> str:
        return (
            f"{self.base_url}/subscriptions/{self.subscription}/providers/Microsoft.ContainerService"
            f"/locations/{self.location}/operations/{op.id}?api-version=2017-08-31"
        )

    def _new_operation(self, kind: str, pool: str) -> Operation:
        op = Operation(
            id=f"{next(self._ids):08d}-0000-4000-8000-{hashlib.sha1(pool.encode()).hexdigest()[:12]}",
            kind=kind,
            pool=pool,
        )
        self.operations[op.id] = op
        return op

    async def _put_pool(self, request: web.Request) -> web.Response:
        if (bad := self._check_cluster(request)) is not None:
            return bad
        name = request.match_info["pool"]
        self.requests[("PUT", name)] += 1
        if not POOL_NAME.match(name):
            return arm_error(
                400,
                "InvalidParameter",
                f"The agent pool name '{name}' is invalid: it must start with a lowercase letter and contain at most 12 lowercase letters and digits.",
            )
        try:
            body = await request.json()
            props = body["properties"]
            vm_size = props["vmSize"]
        except (ValueError, KeyError, TypeError):
            return arm_error(
                400, "InvalidParameter", "The request body must be an agent pool with properties.vmSize."
            )
        if props.get("mode", "User") not in ("User", "System"):
            return arm_error(400, "InvalidParameter", f"Agent pool mode '{props.get('mode')}' is invalid.")
        if self.behavior.cluster_busy_next > 0:
            self.behavior.cluster_busy_next -= 1
            self.requests[("PUT", "busy")] += 1
            return arm_error(
                409,
                "OperationNotAllowed",
                f"Operation is not allowed because there's an in progress upgrading operation on managed cluster '{self.cluster}'. Please wait for it to finish before starting a new operation.",
            )
        existing = self.pools.get(name)
        if existing is not None:
            state = existing["properties"]["provisioningState"]
            if state in ("Creating", "Deleting"):
                return arm_error(
                    409,
                    "OperationNotAllowed",
                    f"Operation is not allowed because there's an in progress {state.lower()} operation on agent pool '{name}'.",
                )
            # A PUT on an existing pool is an update; the same spec changes nothing.
            return web.json_response(existing, status=200)
        if vm_size in self.behavior.unavailable_skus:
            return arm_error(
                400,
                "SkuNotAvailable",
                f"The requested VM size '{vm_size}' is currently not available in location '{self.location}'.",
            )
        pool = {
            "id": self._pool_id(name),
            "name": name,
            "type": "Microsoft.ContainerService/managedClusters/agentPools",
            "properties": {
                "count": props.get("count", 1),
                "vmSize": vm_size,
                "osDiskSizeGB": props.get("osDiskSizeGB", 128),
                "osDiskType": props.get("osDiskType", "Managed"),
                "osType": props.get("osType", "Linux"),
                "osSKU": props.get("osSKU", "Ubuntu"),
                "mode": props.get("mode", "User"),
                "type": "VirtualMachineScaleSets",
                "orchestratorVersion": "1.33.13",
                "nodeLabels": props.get("nodeLabels") or {},
                "nodeTaints": props.get("nodeTaints") or [],
                "tags": props.get("tags") or {},
                "provisioningState": "Creating",
                "powerState": {"code": "Running"},
            },
        }
        self.pools[name] = pool
        self.created_total[name] += 1
        op = self._new_operation("create", name)
        self._spawn(self._finish_create(op))
        return web.json_response(pool, status=201, headers={"Azure-AsyncOperation": self._operation_url(op)})

    async def _finish_create(self, op: Operation) -> None:
        await asyncio.sleep(self.behavior.create_seconds)
        await self._while_stuck()
        if op.status != "InProgress":
            return
        pool = self.pools.get(op.pool)
        if pool is None:
            return
        vm_size = pool["properties"]["vmSize"]
        if vm_size in self.behavior.no_capacity_skus:
            self._fail(
                op,
                pool,
                "AllocationFailed",
                f"Allocation failed. We do not have sufficient capacity for the requested VM size '{vm_size}' in this region.",
            )
            return
        if vm_size in self.behavior.quota:
            if self.behavior.quota[vm_size] <= 0:
                self._fail(
                    op,
                    pool,
                    "QuotaExceeded",
                    f"Operation could not be completed as it results in exceeding approved standard {vm_size} Family Cores quota. Location: {self.location}.",
                )
                return
            self.behavior.quota[vm_size] -= 1
        if self.on_pool_ready is not None:
            await self.on_pool_ready(pool)
        pool["properties"]["provisioningState"] = "Succeeded"
        op.status, op.ended = "Succeeded", time.time()

    async def _while_stuck(self) -> None:
        # Behavior is a plain field tests flip at any moment, so it is looked at, not awaited.
        while self.behavior.operations_never_finish:  # noqa: ASYNC110
            await asyncio.sleep(0.1)

    def _fail(self, op: Operation, pool: dict[str, Any], code: str, message: str) -> None:
        pool["properties"]["provisioningState"] = "Failed"
        op.status, op.ended, op.error = "Failed", time.time(), {"code": code, "message": message}

    async def _get_pool(self, request: web.Request) -> web.Response:
        if (bad := self._check_cluster(request)) is not None:
            return bad
        name = request.match_info["pool"]
        self.requests[("GET", name)] += 1
        pool = self.pools.get(name)
        if pool is None:
            return arm_error(
                404, "NotFound", f"Agent pool '{name}' not found in managed cluster '{self.cluster}'."
            )
        return web.json_response(pool)

    async def _list_pools(self, request: web.Request) -> web.Response:
        if (bad := self._check_cluster(request)) is not None:
            return bad
        self.requests[("GET", "list")] += 1
        return web.json_response({"value": list(self.pools.values())})

    async def _delete_pool(self, request: web.Request) -> web.Response:
        if (bad := self._check_cluster(request)) is not None:
            return bad
        name = request.match_info["pool"]
        self.requests[("DELETE", name)] += 1
        pool = self.pools.get(name)
        if pool is None:
            return web.Response(status=204)
        if pool["properties"]["provisioningState"] != "Deleting":
            # Deleting a pool that is still being created cancels the creation.
            for op in self.operations.values():
                if op.pool == name and op.kind == "create" and op.status == "InProgress":
                    op.status, op.ended = "Canceled", time.time()
                    op.error = {"code": "Canceled", "message": "The operation was canceled by a delete."}
            pool["properties"]["provisioningState"] = "Deleting"
            op = self._new_operation("delete", name)
            self._spawn(self._finish_delete(op))
        else:
            op = next(
                o for o in reversed(list(self.operations.values())) if o.pool == name and o.kind == "delete"
            )
        location = self._operation_url(op).replace("/operations/", "/operationresults/")
        return web.Response(
            status=202, headers={"Azure-AsyncOperation": self._operation_url(op), "Location": location}
        )

    async def _finish_delete(self, op: Operation) -> None:
        await asyncio.sleep(self.behavior.delete_seconds)
        await self._while_stuck()
        pool = self.pools.pop(op.pool, None)
        if pool is not None and self.on_pool_deleted is not None:
            await self.on_pool_deleted(pool)
        op.status, op.ended = "Succeeded", time.time()

    # -- operations ----------------------------------------------------------------------------

    async def _get_operation(self, request: web.Request) -> web.Response:
        op = self.operations.get(request.match_info["op"])
        self.requests[("GET", "operation")] += 1
        if op is None:
            return arm_error(404, "NotFound", "Operation not found.")
        body: dict[str, Any] = {
            "id": f"/subscriptions/{self.subscription}/providers/Microsoft.ContainerService/locations/{self.location}/operations/{op.id}",
            "name": op.id,
            "status": op.status,
            "startTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(op.started)),
        }
        if op.ended is not None:
            body["endTime"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(op.ended))
        if op.error is not None:
            body["error"] = op.error
        return web.json_response(body)

    async def _get_operation_result(self, request: web.Request) -> web.Response:
        op = self.operations.get(request.match_info["op"])
        if op is None or op.status == "InProgress":
            return web.Response(status=202, headers={"Retry-After": "1"})
        return web.Response(status=204)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The operation stays InProgress for good; say why rather than hang silently.
            self.errors.append(repr(task.exception()))


def aks_node_for_pool(
    pool: dict[str, Any],
    subscription: str,
    resource_group: str,
    cluster: str,
    location: str,
    capacity: dict[str, str],
) -> dict[str, Any]:
    """The Node that AKS would register for a one-node pool, shaped like the real thing."""
    name = pool["name"]
    props = pool["properties"]
    vmss = f"aks-{name}-{int(hashlib.sha1(name.encode()).hexdigest()[:7], 16) % 10**8:08d}-vmss"
    node_rg = f"MC_{resource_group}_{cluster}_{location}"
    taints = []
    for spec in props.get("nodeTaints") or []:
        kv, effect = spec.rsplit(":", 1)
        key, _, value = kv.partition("=")
        taints.append({"key": key, "value": value, "effect": effect})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": f"{vmss}000000",
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {
                **(props.get("nodeLabels") or {}),
                "kubernetes.azure.com/agentpool": name,
                "agentpool": name,
                "kubernetes.azure.com/cluster": node_rg,
                "node.kubernetes.io/instance-type": props["vmSize"],
                "beta.kubernetes.io/instance-type": props["vmSize"],
                "topology.kubernetes.io/region": location,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": f"{vmss}000000",
                "kubernetes.azure.com/mode": props.get("mode", "User").lower(),
            },
        },
        "spec": {
            "providerID": (
                f"azure:///subscriptions/{subscription}/resourceGroups/{node_rg.lower()}/providers/"
                f"Microsoft.Compute/virtualMachineScaleSets/{vmss}/virtualMachines/0"
            ),
            "taints": taints,
        },
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
