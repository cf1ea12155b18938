"""The fault and load suite: disturb the operator and the control plane while workspaces
reconcile, then check the invariants that keep users' money and data safe.

    python -m tests.chaos.suite [--seeds N] [--scenarios a,b] [--full]

Each scenario runs once per seed (the seed drives every random choice: when to kill, what to
edit, which inputs to send), bounded in time. A table (scenario, runs, failures, invariant
broken) is printed and the exit code is 1 if any invariant broke. `make chaos` runs the full
suite; tests/e2e/test_chaos.py runs a short one in CI.

The azure-*/cloud-* scenarios run the provisioner with the azure provider
(tests/chaos/azure_provisioner.py) against the ARM-shaped test server, which lives in this
process so that it outlives a killed provisioner.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from kaitopy.controllers.workspace.crds import ensure_workspace_crd
from kaitopy.provisioner.install import ensure_crds
from kaitopy.runtime import ApiError, Client, Informer, Kind, NotFound, TransportError, kinds
from kaitopy.runtime.kinds import EVENT
from kaitopy.runtime.objects import Obj
from tests.chaos.cloud import peak_rate, test_arm
from tests.e2e.operator import Operator, Process, ensure_operator_namespace
from tests.support.fake_arm import Behavior, FakeArm

REPO = Path(__file__).resolve().parents[2]
WORKSPACE = Kind("kaito.sh", "v1beta1", "Workspace", "workspaces")
NODECLAIM = Kind("karpenter.sh", "v1", "NodeClaim", "nodeclaims", namespaced=False)
READY_BOUND_S = 150.0
IDLE_WINDOW_S = 6.0
IDLE_MAX_REQUESTS = 6  # a quiet controller makes (almost) no requests: no storm after a fault
QUIET_BOUND_S = 30.0


class Violation(Exception):
    """An invariant broke; the message says which and how."""


@dataclass
class Env:
    kubeconfig: Path
    client: Client
    workdir: Path
    rng: random.Random
    namespace: str = ""
    claims_seen: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # By UID: a claim deleted and created again under its slot's name counts twice here.
    claim_uids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    targets: dict[str, int] = field(default_factory=dict)
    verdict: str = ""  # one line on what the run saw, for the report

    def kubectl(self, *args: str, input: str | None = None) -> str:
        state = json.loads((self.kubeconfig.parent / "state.json").read_text())
        proc = subprocess.run(
            [f"{state['bin_dir']}/kubectl", f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return proc.stdout + proc.stderr

    def operator(self, name: str) -> Operator:
        d = self.workdir / name
        d.mkdir(parents=True, exist_ok=True)
        return Operator(self.kubeconfig, d)


class ClaimMonitor:
    """Records every NodeClaim ever seen per workspace, for the whole run: a claim that existed
    for a moment counts as much as one that is still there."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.informer = Informer(env.client, NODECLAIM, label_selector="kaito.sh/workspace")
        self.informer.add_handler(self)

    def on_add(self, obj: Obj) -> None:
        labels = obj["metadata"].get("labels") or {}
        key = f"{labels.get('kaito.sh/workspacenamespace')}/{labels.get('kaito.sh/workspace')}"
        self.env.claims_seen[key].add(str(obj["metadata"]["name"]))
        self.env.claim_uids[key].add(str(obj["metadata"]["uid"]))

    def on_update(self, old: Obj, new: Obj) -> None:
        self.on_add(new)

    def on_delete(self, obj: Obj) -> None:
        return None


def workspace(name: str, ns: str, preset: str = "phi-3-mini-4k-instruct", **inference: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": ns},
        "resource": {"instanceType": "Standard_NC6s_v3", "labelSelector": {"matchLabels": {"apps": name}}},
        "inference": {"preset": {"name": preset}, **inference},
    }


def _succeeded(ws: Obj) -> bool:
    return any(
        c.get("type") == "WorkspaceSucceeded" and c.get("status") == "True"
        for c in (ws.get("status") or {}).get("conditions") or ()
    )


async def create_workspaces(env: Env, count: int) -> list[str]:
    names = [f"ws-{i}" for i in range(count)]
    for n in names:
        await env.client.create(WORKSPACE, workspace(n, env.namespace))
        env.targets[f"{env.namespace}/{n}"] = 1
    return names


async def wait_all_ready(env: Env, names: list[str], bound: float = READY_BOUND_S) -> None:
    deadline = time.monotonic() + bound
    while True:
        items = (await env.client.list(WORKSPACE, namespace=env.namespace)).items
        ready = {w["metadata"]["name"] for w in items if _succeeded(w)}
        if set(names) <= ready:
            return
        if time.monotonic() > deadline:
            missing = sorted(set(names) - ready)
            raise Violation(f"not Ready within {bound:.0f}s: {', '.join(missing)}")
        await asyncio.sleep(1.0)


def check_no_double_provisioning(env: Env) -> None:
    for key, target in env.targets.items():
        seen = env.claims_seen.get(key, set())
        if len(seen) > target:
            raise Violation(
                f"{key}: {len(seen)} NodeClaims over the run for a target of {target}: {sorted(seen)}"
            )


async def delete_all_and_check_clean(env: Env, bound: float = 120.0) -> None:
    for w in (await env.client.list(WORKSPACE, namespace=env.namespace)).items:
        with contextlib.suppress(NotFound):
            await env.client.delete(WORKSPACE, w["metadata"]["name"], namespace=env.namespace)
    deadline = time.monotonic() + bound
    sel = f"kaito.sh/workspacenamespace={env.namespace}"
    while True:
        left = {
            "workspaces": len((await env.client.list(WORKSPACE, namespace=env.namespace)).items),
            "nodeclaims": len((await env.client.list(NODECLAIM, label_selector=sel)).items),
            "nodes": len((await env.client.list(kinds.NODE, label_selector=sel)).items),
            "deployments": len((await env.client.list(kinds.DEPLOYMENT, namespace=env.namespace)).items),
        }
        if not any(left.values()):
            return
        if time.monotonic() > deadline:
            raise Violation(f"left behind after deletion: {left}")
        await asyncio.sleep(1.0)


async def check_quiet(op: Operator) -> None:
    """After the disturbance the controller settles: within QUIET_BOUND_S some idle window sees
    almost no API requests (the last status writes and Events may still trail the fault)."""
    assert op.controller is not None
    deadline = time.monotonic() + QUIET_BOUND_S
    windows = []
    while True:
        before = op.controller.metric("rest_client_requests_total")
        await asyncio.sleep(IDLE_WINDOW_S)
        made = op.controller.metric("rest_client_requests_total") - before
        windows.append(int(made))
        if made <= IDLE_MAX_REQUESTS:
            return
        if time.monotonic() > deadline:
            raise Violation(
                f"controller never went quiet within {QUIET_BOUND_S:.0f}s: requests per "
                f"{IDLE_WINDOW_S:.0f}s window {windows} (a storm)"
            )


# -- scenarios ----------------------------------------------------------------------------------


async def kill_controller(env: Env) -> None:
    op = env.operator("kill-controller")
    op.start_provisioner("--kwok-launch-delay=1")
    op.start_controller()
    try:
        names = await create_workspaces(env, 4)
        for _ in range(env.rng.randint(1, 3)):
            await asyncio.sleep(env.rng.uniform(0.0, 3.0))
            assert op.controller is not None
            op.controller.kill()
            op.start_controller()
        await wait_all_ready(env, names)
        check_no_double_provisioning(env)
        await check_quiet(op)
        await delete_all_and_check_clean(env)
    finally:
        op.stop()


async def kill_provisioner(env: Env) -> None:
    op = env.operator("kill-provisioner")
    op.start_provisioner("--kwok-launch-delay=2")
    op.start_controller()
    try:
        names = await create_workspaces(env, 3)
        for _ in range(env.rng.randint(1, 3)):
            await asyncio.sleep(env.rng.uniform(0.2, 2.5))
            assert op.provisioner is not None
            op.provisioner.kill()
            op.start_provisioner("--kwok-launch-delay=2")
        await wait_all_ready(env, names)
        check_no_double_provisioning(env)
        await delete_all_and_check_clean(env)
    finally:
        op.stop()


def _restart_component(env: Env, component: str, kill: bool) -> None:
    argv = [sys.executable, str(REPO / "hack" / "localcluster.py"), "restart", component]
    env_vars = {"KAITOPY_CLUSTER_DIR": str(env.kubeconfig.parent), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [*argv, "--kill"] if kill else argv, capture_output=True, text=True, timeout=180, env=env_vars
    )
    if proc.returncode != 0:
        raise RuntimeError(f"restart {component} failed: {proc.stderr}")


async def _control_plane_fault(env: Env, component: str, compact: bool = False) -> None:
    op = env.operator(f"restart-{component}")
    op.start_provisioner("--kwok-launch-delay=1")
    op.start_controller()
    try:
        names = await create_workspaces(env, 3)
        await asyncio.sleep(env.rng.uniform(0.0, 2.0))
        if compact:
            await compact_etcd(env)
        await asyncio.to_thread(_restart_component, env, component, env.rng.random() < 0.5)
        more = [f"after-{i}" for i in range(2)]  # created after the fault: watches must have resumed
        for n in more:
            await env.client.create(WORKSPACE, workspace(n, env.namespace))
            env.targets[f"{env.namespace}/{n}"] = 1
        await wait_all_ready(env, names + more)
        check_no_double_provisioning(env)
        await check_quiet(op)  # every informer re-listed after the fault: that must not start a storm
        await delete_all_and_check_clean(env)
    finally:
        op.stop()


async def compact_etcd(env: Env) -> None:
    """Compact etcd up to its current revision: every watch that reconnects from an older
    resourceVersion now gets 410 Gone and must re-list."""
    state = json.loads((env.kubeconfig.parent / "state.json").read_text())
    base = f"http://127.0.0.1:{state['ports']['etcd']}/v3"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/kv/range", json={"key": "AA==", "limit": 1}) as r:
            revision = int((await r.json())["header"]["revision"])
        async with http.post(f"{base}/kv/compaction", json={"revision": revision}) as r:
            r.raise_for_status()


async def restart_apiserver(env: Env) -> None:
    await _control_plane_fault(env, "kube-apiserver")


async def restart_etcd(env: Env) -> None:
    await _control_plane_fault(env, "etcd")


async def gone_everywhere(env: Env) -> None:
    await _control_plane_fault(env, "kube-apiserver", compact=True)


async def edit_loop(env: Env) -> None:
    op = env.operator("edit-loop")
    op.start_provisioner()
    op.start_controller()
    try:
        name = "edited"
        await env.client.create(WORKSPACE, workspace(name, env.namespace))
        env.targets[f"{env.namespace}/{name}"] = 1
        last: list[dict[str, Any]] = []
        for i in range(8):
            adapters = [{"source": {"name": f"a{i}", "image": f"registry.local/a{i}:1"}, "strength": "0.5"}][
                : env.rng.randint(0, 1)
            ]
            for _ in range(5):
                ws = await env.client.get(WORKSPACE, name, namespace=env.namespace)
                ws["inference"]["adapters"] = adapters
                ws["metadata"].setdefault("labels", {})["edit"] = str(i)
                try:
                    await env.client.update(WORKSPACE, ws)
                    break
                except ApiError:
                    continue  # the controller wrote in between: read again, as a user would
            last = adapters
            await asyncio.sleep(env.rng.uniform(0.0, 0.6))
        await wait_all_ready(env, [name])
        want = sorted(a["source"]["name"] for a in last)
        deadline = time.monotonic() + 60
        while True:
            dep = await env.client.get(kinds.DEPLOYMENT, name, namespace=env.namespace)
            inits = [c["name"] for c in dep["spec"]["template"]["spec"].get("initContainers") or ()]
            have = sorted(n.removeprefix("adapter-") for n in inits if n.startswith("adapter-"))
            if have == want:
                break
            if time.monotonic() > deadline:
                raise Violation(f"lost update: deployment has adapters {have}, last edit asked for {want}")
            await asyncio.sleep(1.0)
        await check_quiet(op)
        check_no_double_provisioning(env)
        await delete_all_and_check_clean(env)
    finally:
        op.stop()


def audit_writers(env: Env, since: int) -> list[tuple[str, str, str]]:
    """(time, writer identity, what) for every write by a controller replica to this scenario's
    objects, from the API server's audit log after byte offset `since`. The User-Agent carries
    the process identity (kaitopy/<version> (controller; <identity>))."""
    path = env.kubeconfig.parent / "logs" / "audit.log"
    with path.open() as f:
        f.seek(since)
        lines = f.read().splitlines()
    out = []
    for line in lines:
        event = json.loads(line)
        agent = str(event.get("userAgent") or "")
        ref = event.get("objectRef") or {}
        mine = ref.get("namespace") == env.namespace or ref.get("resource") == "nodeclaims"
        if (
            "(controller; " in agent
            and mine
            and event.get("verb") in ("create", "update", "patch", "delete")
            and ref.get("resource") != "leases"  # the election itself is how they take turns
        ):
            identity = agent.split("(controller; ", 1)[1].rstrip(")")
            what = f"{event['verb']} {ref.get('resource')}/{ref.get('name', '')}"
            out.append((str(event["requestReceivedTimestamp"]), identity, what))
    return sorted(out)


async def leader_failover(env: Env) -> None:
    audit = env.kubeconfig.parent / "logs" / "audit.log"
    since = audit.stat().st_size
    a, b = env.operator("leader-a"), env.operator("leader-b")
    a.start_provisioner()
    ns_flag = f"--leader-election-namespace={env.namespace}"
    first = a.start_controller("--leader-elect", ns_flag, "--no-webhook")
    second = b.start_controller("--leader-elect", ns_flag, "--no-webhook")
    try:
        await asyncio.sleep(3.0)
        leaders = [p for p in (first, second) if p.metric("leader_election_master_status") == 1]
        if len(leaders) != 1:
            raise Violation(f"{len(leaders)} leaders with two replicas running")
        leader = leaders[0]
        follower = second if leader is first else first
        leader.kill()
        killed_at = time.monotonic()
        names = await create_workspaces(env, 2)
        await wait_all_ready(env, names, bound=15.0 + 10.0 + 60.0)
        took = time.monotonic() - killed_at
        if follower.metric("leader_election_master_status") != 1:
            raise Violation("the follower did not take over after the leader was killed")
        if took > 15.0 + 60.0:
            raise Violation(f"takeover and reconcile took {took:.0f}s")
        writes = audit_writers(env, since)
        writers = [identity for _, identity, _ in writes]
        switches = sum(1 for x, y in itertools.pairwise(writers) if x != y)
        if not writes:
            raise Violation("no controller writes found in the audit log (is the User-Agent set?)")
        if switches > 1:
            raise Violation(
                f"two replicas wrote in turn ({switches} switches): "
                + "; ".join(f"{t} {i} {w}" for t, i, w in writes[:12])
            )
        check_no_double_provisioning(env)
        await delete_all_and_check_clean(env)
    finally:
        a.stop()
        b.stop()


async def bad_input(env: Env, count: int = 40) -> None:
    """Hypothesis-drawn workspaces, valid and mutated (tests.chaos.inputs), through the API server:
    every create is answered (no 5xx, no timeout) and the controller survives whatever was admitted:
    it stays up, raises no unexpected exception, and does not keep failing an admitted input."""
    from tests.chaos.inputs import workspace_bodies
    from tests.chaos.strategies import config_maps

    hypothesis_seed = env.rng.getrandbits(32)
    bodies = await asyncio.to_thread(workspace_bodies, hypothesis_seed, count, env.namespace)
    for cm in config_maps(env.namespace):  # the ConfigMaps valid inputs may name
        await env.client.create(kinds.CONFIG_MAP, cm)
    op = env.operator("bad-input")
    op.start_provisioner()
    op.start_controller()
    try:
        admitted, refused, slowest = 0, 0, 0.0
        for body in bodies:
            sent = time.monotonic()
            try:
                await env.client.create(WORKSPACE, body)
                admitted += 1
            except ApiError as err:
                if err.status >= 500:
                    raise Violation(f"{err.status} for input {json.dumps(body)[:300]}: {err}") from err
                refused += 1
            except TransportError as err:
                raise Violation(f"no answer for input {json.dumps(body)[:300]}: {err}") from err
            slowest = max(slowest, time.monotonic() - sent)
        print(
            f"bad-input: {admitted} admitted, {refused} refused of {len(bodies)} "
            f"(hypothesis seed {hypothesis_seed}, slowest answer {slowest:.2f}s)",
            flush=True,
        )
        await asyncio.sleep(5.0)
        assert op.controller is not None and op.controller.proc is not None
        if op.controller.proc.poll() is not None:
            raise Violation(f"controller exited with {op.controller.proc.returncode}")
        # Conflicts while the first reconciles race each other are retried and harmless; what must
        # not happen is an admitted input that keeps failing hot. Judge a window after the start.
        settled = op.controller.metric("controller_runtime_reconcile_errors_total")
        await asyncio.sleep(5.0)
        errors = op.controller.metric("controller_runtime_reconcile_errors_total") - settled
        # API errors are logged without a traceback: one means the controller itself broke on an
        # admitted object (a KeyError, a TypeError) even though the process survived it.
        log_text = await asyncio.to_thread(op.controller.log_path.read_text, errors="replace")
        # Clean up before judging, so a broken invariant leaves no nodes behind for other tests.
        await delete_all_and_check_clean(env)
        if errors > admitted:
            raise Violation(
                f"{errors:.0f} reconcile errors in a 5s window after start-up for {admitted} admitted "
                "workspaces (an input the controller keeps failing on)"
            )
        if "Traceback" in log_text:
            at = log_text.index("Traceback")
            excerpt = log_text[max(0, at - 600) : at + 1500]
            raise Violation(f"the controller raised on an admitted input: {excerpt}")
    finally:
        op.stop()


async def waves(env: Env, count: int = 30, rounds: int = 5) -> None:
    """Create and delete `count` workspaces `rounds` times: memory must not grow with the waves."""
    op = env.operator("waves")
    op.start_provisioner()
    ctrl = op.start_controller()
    rss: list[float] = []
    try:
        for _ in range(rounds):
            env.claims_seen.clear()
            env.targets.clear()
            names = await create_workspaces(env, count)
            await wait_all_ready(env, names, bound=READY_BOUND_S + count)
            check_no_double_provisioning(env)
            await delete_all_and_check_clean(env, bound=120.0 + count)
            assert ctrl.proc is not None
            status = await asyncio.to_thread(Path(f"/proc/{ctrl.proc.pid}/status").read_text)
            rss.append(int(next(x for x in status.splitlines() if x.startswith("VmRSS:")).split()[1]) / 1024)
        env.verdict = f"{rounds} waves of {count}; controller RSS after each: {[round(r) for r in rss]} MiB"
        if rss[-1] > rss[0] * 1.25 + 10:
            raise Violation(f"controller RSS grew over the waves: {[round(r) for r in rss]} MiB")
    finally:
        op.stop()


async def load_waves(env: Env) -> None:
    """The issue's load: 1,000 workspaces, created and deleted in 5 waves of 200."""
    await waves(env, count=200, rounds=5)


# -- the azure provider against the ARM-shaped test server -------------------------------------

INSTANCE_TYPE = "Standard_NC6s_v3"  # what workspace() asks for
LAUNCH_TIMEOUT_S = 8.0  # cloud-stuck-operation's provisioner gives up on a launch after this
POLL_INTERVAL_S = 0.5  # how often the provisioner looks at an operation in flight


async def start_azure_provisioner(op: Operator, arm: FakeArm, *extra: str) -> Process:
    # In a thread: the test server answers in this event loop while the process starts.
    return await asyncio.to_thread(
        op.start_azure_provisioner,
        arm.base_url,
        arm.cert.ca_path,
        f"--poll-interval={POLL_INTERVAL_S}",
        *extra,
    )


async def until(what: str, check: Callable[[], Awaitable[bool]], bound: float) -> float:
    """Wait for `check` to hold; returns the seconds it took, raises Violation past `bound`."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > bound:
            raise Violation(f"{what}: not within {bound:.0f}s")
        await asyncio.sleep(0.5)
    return time.monotonic() - started


def condition(obj: Obj, type_: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if c.get("type") == type_:
            return dict(c)
    return {}


async def wait_ready_on_azure(env: Env, arm: FakeArm, op: Operator, names: list[str]) -> None:
    """wait_all_ready, and when it fails, what the cloud and the claims looked like."""
    try:
        await wait_all_ready(env, names)
    except Violation as v:
        sel = f"kaito.sh/workspacenamespace={env.namespace}"
        claims = {
            c["metadata"]["name"]: {
                t: f"{cond.get('status')}/{cond.get('reason')}"
                for t in ("Launched", "Registered", "Ready")
                if (cond := condition(c, t))
            }
            for c in (await env.client.list(NODECLAIM, label_selector=sel)).items
        }
        pools = {n: p["properties"]["provisioningState"] for n, p in arm.pools.items()}
        nodes = len((await env.client.list(kinds.NODE, label_selector=sel)).items)
        proc = op.provisioner.proc if op.provisioner is not None else None
        alive = proc is not None and proc.poll() is None
        raise Violation(
            f"{v}; pools {pools}, claims {claims}, {nodes} nodes, provisioner "
            f"{'running' if alive else 'exited'}, ARM requests {dict(arm.requests)}, "
            f"test-server errors {arm.errors}"
        ) from None


def check_created_once(arm: FakeArm) -> None:
    twice = {pool: n for pool, n in arm.created_total.items() if n > 1}
    if twice:
        raise Violation(f"agent pools created by more than one PUT: {twice}")


async def delete_all_and_check_no_pools(env: Env, arm: FakeArm) -> None:
    await delete_all_and_check_clean(env)

    async def no_pools() -> bool:
        return not arm.pools

    try:
        await until("agent pools deleted", no_pools, 30.0)
    except Violation:
        left = {n: p["properties"]["provisioningState"] for n, p in arm.pools.items()}
        raise Violation(f"agent pools left after deletion: {left}") from None


async def clean_up_after(env: Env) -> None:
    """Whatever a broken run left behind goes: the next run's workspaces have the same names and
    labels, and would take this run's nodes as theirs."""
    with contextlib.suppress(Violation, ApiError):
        await delete_all_and_check_clean(env, bound=60.0)
    sel = f"kaito.sh/workspacenamespace={env.namespace}"
    for claim in (await env.client.list(NODECLAIM, label_selector=sel)).items:
        with contextlib.suppress(NotFound):
            await env.client.patch(NODECLAIM, claim["metadata"]["name"], {"metadata": {"finalizers": None}})
            await env.client.delete(NODECLAIM, claim["metadata"]["name"])
    for node in (await env.client.list(kinds.NODE, label_selector=sel)).items:
        with contextlib.suppress(NotFound):
            await env.client.delete(kinds.NODE, node["metadata"]["name"])


async def azure_kill_mid_lro(env: Env) -> None:
    """SIGKILL the azure provisioner while agent-pool creations are in flight, once per workspace
    (created one after another): either right at its pool's PUT, before the continuation token is
    saved on the claim (the restarted one meets a 409 and adopts the pool), or at a random moment of
    the operation (it resumes polling from the token). No pool is PUT into being twice."""
    async with test_arm(env.client, env.workdir, Behavior(create_seconds=3.0)) as arm:
        op = env.operator("azure-kill-mid-lro")
        await start_azure_provisioner(op, arm)
        await asyncio.to_thread(op.start_controller)
        try:
            names: list[str] = []
            at_put = mid_operation = 0
            for i in range(3):
                name = f"ws-{i}"
                await env.client.create(WORKSPACE, workspace(name, env.namespace))
                env.targets[f"{env.namespace}/{name}"] = 1
                names.append(name)
                if env.rng.random() < 0.5:
                    # Looked at every few milliseconds: the kill lands while the provisioner
                    # still writes the token it just got.
                    for _ in range(10_000):
                        if len(arm.created_total) >= len(names):
                            break
                        await asyncio.sleep(0.002)
                    at_put += 1
                else:
                    await asyncio.sleep(env.rng.uniform(0.5, 3.0))
                    mid_operation += 1
                assert op.provisioner is not None
                op.provisioner.kill()
                await start_azure_provisioner(op, arm)
            await wait_ready_on_azure(env, arm, op, names)
            check_no_double_provisioning(env)
            check_created_once(arm)
            if len(arm.created_total) != len(names):
                raise Violation(f"{len(arm.created_total)} agent pools for {len(names)} workspaces")
            await delete_all_and_check_no_pools(env, arm)
            puts = sum(arm.requests[("PUT", p)] for p in arm.created_total)
            env.verdict = (
                f"3 SIGKILLs ({at_put} at a pool's PUT, {mid_operation} mid-operation); "
                f"{len(arm.created_total)} pools, each created by one PUT ({puts} PUTs in all, the "
                "rest answered 409 or 200); none left after deletion"
            )
        finally:
            await clean_up_after(env)
            await asyncio.to_thread(op.stop)


THROTTLED = 8
REQUESTS_PER_LAUNCH = 3  # the least a launch takes: the PUT, one look at the operation, the pool
MAX_REQUEST_MULTIPLE = 4  # what the throttle/5xx scenarios allow over that least
RATE_WINDOW_S = 3.0


def check_no_request_storm(arm: FakeArm, since: int, faults: int, launches: int) -> str:
    """Two bounds: in all, a few times the least the launches need; at any moment, no more than
    polling every claim at the poll interval (at most REQUESTS_PER_LAUNCH requests a look) plus one
    extra try per fault (the SDK's first retry of a 5xx is immediate). A loop that ignores
    Retry-After or backoff makes hundreds a second against a local server."""
    made = len(arm.request_times) - since
    least = faults + REQUESTS_PER_LAUNCH * launches
    peak = peak_rate(arm.request_times[since:], RATE_WINDOW_S)
    peak_bound = int(faults + launches * REQUESTS_PER_LAUNCH / POLL_INTERVAL_S * RATE_WINDOW_S)
    if made > MAX_REQUEST_MULTIPLE * least:
        raise Violation(
            f"{made} ARM requests to launch {launches} pools through {faults} faults: more than "
            f"{MAX_REQUEST_MULTIPLE}x the least ({least}), a hot loop"
        )
    if peak > peak_bound:
        raise Violation(f"{peak} ARM requests within {RATE_WINDOW_S:g}s (bound {peak_bound}): a hot loop")
    return (
        f"{made} ARM requests (least {least}, bound {MAX_REQUEST_MULTIPLE * least}), "
        f"peak {peak} per {RATE_WINDOW_S:g}s (bound {peak_bound})"
    )


def check_retry_after_honoured(arm: FakeArm, callers: int) -> str:
    """Each caller (a claim's reconcile, the garbage collector) that is told to wait Retry-After
    seconds before its next try can meet at most one 429 per wait: `callers` of them need at least
    ceil(n / callers) - 1 waits for n throttled answers. Retrying at once does them in milliseconds."""
    n, wait = len(arm.throttled_times), arm.behavior.throttle_retry_after_s
    span = arm.throttled_times[-1] - arm.throttled_times[0]
    least = (-(-n // callers) - 1) * wait * 0.9
    if span < least:
        raise Violation(
            f"{n} answers of 429 (Retry-After: {wait}s) within {span:.2f}s; honouring Retry-After with "
            f"{callers} callers takes at least {least:.1f}s: the throttle is not respected"
        )
    return f"{n} 429s over {span:.1f}s (Retry-After honoured: >= {least:.1f}s)"


async def _transient_faults(
    env: Env, name: str, inject: Callable[[Behavior], None], left: Callable[[Behavior], int]
) -> None:
    async with test_arm(env.client, env.workdir, Behavior(create_seconds=1.0)) as arm:
        op = env.operator(name)
        await start_azure_provisioner(op, arm)
        await asyncio.to_thread(op.start_controller)
        try:
            since = len(arm.request_times)
            inject(arm.behavior)
            started = time.monotonic()
            names = await create_workspaces(env, 2)
            await wait_ready_on_azure(env, arm, op, names)
            took = time.monotonic() - started
            faults = arm.requests[("PUT", "throttled")] + arm.requests[("GET", "throttled")]
            faults += arm.requests[("PUT", "5xx")] + arm.requests[("GET", "5xx")]
            if left(arm.behavior):
                raise Violation(
                    f"{left(arm.behavior)} injected faults never reached: the scenario tested nothing"
                )
            storm = check_no_request_storm(arm, since, faults, len(names))
            if arm.throttled_times:
                storm += "; " + check_retry_after_honoured(arm, callers=len(names) + 1)
            check_no_double_provisioning(env)
            check_created_once(arm)
            await delete_all_and_check_no_pools(env, arm)
            env.verdict = f"{faults} faulted answers, Ready in {took:.0f}s; {storm}; each pool created once"
        finally:
            await clean_up_after(env)
            await asyncio.to_thread(op.stop)


async def cloud_throttle(env: Env) -> None:
    """429 with Retry-After on the next requests: the SDK waits as told, workspaces become Ready."""

    def inject(b: Behavior) -> None:
        b.throttle_next, b.throttle_retry_after_s = THROTTLED, 1

    await _transient_faults(env, "cloud-throttle", inject, lambda b: b.throttle_next)


async def cloud_5xx(env: Env) -> None:
    """500s on the next requests: retried (by the SDK, then the controller's backoff), Ready."""

    def inject(b: Behavior) -> None:
        b.fail_next_5xx = THROTTLED

    await _transient_faults(env, "cloud-5xx", inject, lambda b: b.fail_next_5xx)


async def cloud_outage(env: Env) -> None:
    """ARM unreachable for a while (connections refused, open ones dropped) while pools are being
    created, with the garbage collector passing every second: the provisioner rides it out (it
    neither exits nor gives a claim up), and every workspace becomes Ready once ARM is back."""
    async with test_arm(env.client, env.workdir, Behavior(create_seconds=2.0)) as arm:
        op = env.operator("cloud-outage")
        await start_azure_provisioner(op, arm, "--gc-interval=1")
        await asyncio.to_thread(op.start_controller)
        try:
            names = await create_workspaces(env, 2)

            async def first_put() -> bool:
                return bool(arm.created_total)

            await until("the first agent-pool PUT", first_put, 60.0)
            await asyncio.sleep(env.rng.uniform(0.0, 1.5))
            outage = env.rng.uniform(4.0, 8.0)
            await arm.go_offline()
            await asyncio.sleep(outage)
            await arm.go_online()

            def still_up(when: str) -> None:
                assert op.provisioner is not None and op.provisioner.proc is not None
                if op.provisioner.proc.poll() is not None:
                    raise Violation(
                        f"the provisioner exited ({op.provisioner.proc.returncode}) {when} a {outage:.0f}s "
                        f"ARM outage; its log ends: {op.provisioner.logs()[-600:]!r}"
                    )

            still_up("during")
            try:
                await wait_ready_on_azure(env, arm, op, names)
            finally:
                still_up("after")
            check_no_double_provisioning(env)
            check_created_once(arm)
            await delete_all_and_check_no_pools(env, arm)
            env.verdict = (
                f"{outage:.1f}s outage mid-creation; provisioner stayed up; all Ready; "
                f"{len(arm.created_total)} pools each created once; none left after deletion"
            )
        finally:
            await clean_up_after(env)
            await asyncio.to_thread(op.stop)


async def cloud_quota(env: Env) -> None:
    """No quota for the VM size: the workspace says so (QuotaExceeded, the size, "quota"), and
    the failed claim stays the only one: no new claims, no retried PUTs."""
    async with test_arm(env.client, env.workdir, Behavior(quota={INSTANCE_TYPE: 0})) as arm:
        op = env.operator("cloud-quota")
        await start_azure_provisioner(op, arm)
        await asyncio.to_thread(op.start_controller)
        try:
            name = (await create_workspaces(env, 1))[0]
            key = f"{env.namespace}/{name}"
            seen: dict[str, Any] = {}

            async def says_quota() -> bool:
                ws = await env.client.get(WORKSPACE, name, namespace=env.namespace)
                seen.update(condition(ws, "ResourceReady"))
                return seen.get("status") == "False" and seen.get("reason") == "QuotaExceeded"

            try:
                await until("ResourceReady=False with reason QuotaExceeded", says_quota, 60.0)
            except Violation as v:
                raise Violation(f"{v}; last ResourceReady: {seen}") from None
            message = str(seen.get("message") or "")
            if INSTANCE_TYPE not in message or "quota" not in message.lower():
                raise Violation(
                    f"the QuotaExceeded message does not name both {INSTANCE_TYPE} and quota: {message!r}"
                )
            # A while longer: a failed claim must be neither retried nor replaced.
            since = len(arm.request_times)
            await asyncio.sleep(8.0)
            later = len(arm.request_times) - since
            await check_quiet(op)
            claims, uids = env.claims_seen.get(key, set()), env.claim_uids.get(key, set())
            if len(claims) != 1 or len(uids) != 1:
                raise Violation(
                    f"{len(uids)} NodeClaims ({sorted(claims)}) for a workspace over quota: a storm"
                )
            if sum(arm.created_total.values()) > 1:
                raise Violation(f"agent pool PUTs retried over quota: {dict(arm.created_total)}")
            running = [n for n, p in arm.pools.items() if p["properties"]["provisioningState"] != "Failed"]
            nodes = await env.client.list(
                kinds.NODE, label_selector=f"kaito.sh/workspacenamespace={env.namespace}"
            )
            if running or nodes.items:
                raise Violation(f"capacity appeared over quota: pools {running}, nodes {len(nodes.items)}")
            if later > 2:
                raise Violation(f"{later} ARM requests in 8s after the launch failed for good")
            await delete_all_and_check_no_pools(env, arm)
            env.verdict = (
                f"ResourceReady=False QuotaExceeded: '...{message[-100:]}'; 1 claim, "
                f"{sum(arm.created_total.values())} pool PUT (Failed, deleted with the workspace), "
                f"{later} ARM requests in the 8s after"
            )
        finally:
            await clean_up_after(env)
            await asyncio.to_thread(op.stop)


async def cloud_stuck_operation(env: Env) -> None:
    """Agent-pool operations that never finish: past the launch timeout the claim is deleted
    (LaunchTimeout Event, the workspace says so), its pool is deleted once the cloud recovers,
    and one replacement claim follows, which then becomes Ready."""
    behavior = Behavior(create_seconds=0.5, operations_never_finish=True)
    async with test_arm(env.client, env.workdir, behavior) as arm:
        op = env.operator("cloud-stuck-operation")
        await start_azure_provisioner(op, arm, f"--launch-timeout={LAUNCH_TIMEOUT_S:g}")
        await asyncio.to_thread(op.start_controller)
        try:
            name = (await create_workspaces(env, 1))[0]
            key = f"{env.namespace}/{name}"
            seen: dict[str, Any] = {}

            async def says_timeout() -> bool:
                ws = await env.client.get(WORKSPACE, name, namespace=env.namespace)
                seen.update(condition(ws, "ResourceReady"))
                return seen.get("reason") == "LaunchTimeout"

            try:
                waited = await until(
                    "ResourceReady with reason LaunchTimeout", says_timeout, LAUNCH_TIMEOUT_S + 30
                )
            except Violation as v:
                raise Violation(f"{v}; last ResourceReady: {seen}") from None
            message = str(seen.get("message") or "")
            if "not launched after" not in message:
                raise Violation(f"the LaunchTimeout condition does not say what happened: {message!r}")
            claim = next(iter(env.claims_seen[key]))

            async def timeout_event() -> bool:
                events = await env.client.list(EVENT, namespace="default")
                return any(
                    e.get("reason") == "LaunchTimeout" and (e.get("regarding") or {}).get("name") == claim
                    for e in events.items
                )

            await until(f"a LaunchTimeout Event for NodeClaim {claim}", timeout_event, 10.0)

            async def pool_deleting() -> bool:
                pool = arm.pools.get(claim)
                return pool is not None and pool["properties"]["provisioningState"] == "Deleting"

            await until(f"the timed-out claim's pool {claim} being deleted", pool_deleting, 20.0)
            # Still stuck: the claim waits on the deletion (its finalizer holds the slot's name, so
            # no replacement yet), looking at the pool once a poll interval, two requests allowed.
            since = len(arm.request_times)
            await asyncio.sleep(5.0)
            stuck_requests = len(arm.request_times) - since
            if stuck_requests > 5.0 / POLL_INTERVAL_S * 2 + 2:
                raise Violation(f"{stuck_requests} ARM requests in 5s while one deletion was stuck")
            if len(env.claim_uids.get(key, set())) != 1:
                raise Violation("a replacement claim while the timed-out one's pool was still deleting")
            arm.behavior.operations_never_finish = False  # the cloud recovers
            await wait_ready_on_azure(env, arm, op, [name])
            uids = env.claim_uids.get(key, set())
            if len(uids) > 2:
                raise Violation(f"{len(uids)} NodeClaims over the run for one stuck launch (bound 2)")
            if arm.created_total[claim] != len(uids):
                raise Violation(
                    f"pool {claim} created {arm.created_total[claim]} times for {len(uids)} claims"
                )
            await delete_all_and_check_no_pools(env, arm)
            env.verdict = (
                f"LaunchTimeout on the workspace after {waited:.0f}s ({message[:60]!r}...), Event recorded, "
                f"pool deleted; {len(uids)} claims in all; {stuck_requests} ARM requests in 5s stuck"
            )
        finally:
            await clean_up_after(env)
            await asyncio.to_thread(op.stop)


SCENARIOS: dict[str, Callable[[Env], Awaitable[None]]] = {
    "kill-controller": kill_controller,
    "kill-provisioner": kill_provisioner,
    "restart-apiserver": restart_apiserver,
    "restart-etcd": restart_etcd,
    "gone-everywhere": gone_everywhere,
    "edit-loop": edit_loop,
    "leader-failover": leader_failover,
    "bad-input": bad_input,
    "waves": waves,
    "load-1000": load_waves,
    "azure-kill-mid-lro": azure_kill_mid_lro,
    "cloud-throttle": cloud_throttle,
    "cloud-5xx": cloud_5xx,
    "cloud-outage": cloud_outage,
    "cloud-quota": cloud_quota,
    "cloud-stuck-operation": cloud_stuck_operation,
}
# Every scenario is bounded; the load waves get longer than the 15 minutes the others get.
BOUND_S = {"load-1000": 2400.0}
SHORT = (
    "kill-controller",
    "kill-provisioner",
    "restart-apiserver",
    "gone-everywhere",
    "edit-loop",
    "bad-input",
    "azure-kill-mid-lro",
    "cloud-throttle",
    "cloud-5xx",
    "cloud-outage",
    "cloud-quota",
    "cloud-stuck-operation",
)


@dataclass
class Outcome:
    scenario: str
    seed: int
    seconds: float
    violation: str | None
    verdict: str = ""


async def delete_namespace_eventually(client: Client, ns: str, bound_s: float = 120.0) -> None:
    """Clean up even after a run that left the API server restarting."""
    deadline = time.monotonic() + bound_s
    while True:
        try:
            await client.delete(kinds.NAMESPACE, ns)
            return
        except NotFound:
            return
        except (ApiError, TransportError):
            if time.monotonic() > deadline:
                print(f"could not delete namespace {ns} within {bound_s:.0f}s", flush=True)
                return
            await asyncio.sleep(2.0)


async def run_one(kubeconfig: Path, scenario: str, seed: int, workdir: Path) -> Outcome:
    client = await Client.from_kubeconfig(str(kubeconfig))
    async with client:
        # The claim monitor watches NodeClaims from the start, before any provisioner has run on
        # a fresh cluster: install the CRDs the operator would install, so its list can succeed.
        await ensure_crds(client)
        await ensure_workspace_crd(client)
        await ensure_operator_namespace(client)
        ns = f"chaos-{scenario}-{seed}-{uuid.uuid4().hex[:4]}"
        await client.create(
            kinds.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        )
        env = Env(kubeconfig, client, workdir / f"{scenario}-{seed}", random.Random(seed), namespace=ns)
        monitor = ClaimMonitor(env)
        monitor.informer.start()
        started = time.monotonic()
        violation = None
        try:
            await monitor.informer.wait_synced()
            await asyncio.wait_for(SCENARIOS[scenario](env), timeout=BOUND_S.get(scenario, 900.0))
        except Violation as v:
            violation = str(v)
        except TimeoutError:
            violation = f"scenario exceeded its {BOUND_S.get(scenario, 900.0) / 60:.0f} minute bound"
        except Exception as err:  # one broken run is reported as such; the suite goes on
            violation = f"the scenario itself failed: {err!r}"
        finally:
            await monitor.informer.stop()
            await delete_namespace_eventually(client, ns)
        return Outcome(scenario, seed, time.monotonic() - started, violation, env.verdict)


def print_table(outcomes: list[Outcome]) -> None:
    by: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by[o.scenario].append(o)
    print(f"\n{'scenario':<22} {'runs':>5} {'failures':>9} {'mean s':>7}  invariant broken")
    for name, runs in by.items():
        failed = [o for o in runs if o.violation]
        broken = "; ".join(f"seed {o.seed}: {o.violation}" for o in failed) or "-"
        mean = sum(o.seconds for o in runs) / len(runs)
        print(f"{name:<22} {len(runs):>5} {len(failed):>9} {mean:>7.1f}  {broken}")


def cluster_kubeconfig() -> Path:
    up = subprocess.run(
        [sys.executable, str(REPO / "hack" / "localcluster.py"), "up"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(up.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="runs per scenario (seeds 1..N)")
    ap.add_argument("--scenarios", default="", help="comma-separated subset (default: all, or the short set)")
    ap.add_argument("--full", action="store_true", help="every scenario, including the load waves")
    ap.add_argument("--first-seed", type=int, default=1, help="run seeds FIRST..FIRST+N-1")
    ap.add_argument("--workdir", type=Path, help="keep the processes' logs here (default: a temporary dir)")
    args = ap.parse_args()
    names = args.scenarios.split(",") if args.scenarios else list(SCENARIOS if args.full else SHORT)
    kubeconfig = cluster_kubeconfig()
    outcomes = []
    with contextlib.ExitStack() as stack:
        tmp = args.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="kaitopy-chaos-"))
        for name in names:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                o = asyncio.run(run_one(kubeconfig, name, seed, Path(tmp)))
                print(
                    f"{name} seed {seed}: {'ok' if o.violation is None else 'BROKEN: ' + o.violation} "
                    f"({o.seconds:.1f}s){': ' + o.verdict if o.verdict else ''}",
                    flush=True,
                )
                outcomes.append(o)
    print_table(outcomes)
    out = REPO / "bench" / "results" / "chaos.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([o.__dict__ for o in outcomes], indent=2))
    return 1 if any(o.violation for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
