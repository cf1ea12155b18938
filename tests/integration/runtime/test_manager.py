"""Leader election between managers, lost leases, and graceful shutdown, with real processes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator

from kaitopy.runtime import (
    Client,
    LeaderElectionSettings,
    Manager,
    ManagerSettings,
    Request,
    Result,
    kinds,
)
from kaitopy.runtime.manager.leaderelection import LeaderElector
from tests.support.cluster import REPO, Cluster
from tests.support.wait import eventually

from .manager_proc import LEASE

LEASE_DURATION = 15.0  # the defaults under test: 15 s lease, 10 s renew deadline, 2 s retry


class Proc:
    """A manager_proc child and the lines it printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def expect(self, line: str, timeout: float = 60) -> float:
        """Wait for `line` on stdout; returns the monotonic time it was read."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while line not in self.lines:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {line!r} from the manager; it printed {self.lines}")
            raw = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            if not raw:
                raise AssertionError(f"manager exited before {line!r}; it printed {self.lines}")
            self.lines.append(raw.decode().strip())
        return time.monotonic()


@contextlib.asynccontextmanager
async def manager_proc(cluster: Cluster, namespace: str, identity: str, *extra: str) -> AsyncIterator[Proc]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.runtime.manager_proc",
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--namespace",
        namespace,
        "--identity",
        identity,
        *extra,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        yield Proc(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def in_process_manager(client: Client, namespace: str, identity: str) -> Manager:
    mgr = Manager(
        client,
        ManagerSettings(
            leader_election=LeaderElectionSettings(LEASE, namespace, identity),
            probe_port=None,
            handle_signals=False,
        ),
    )

    async def reconcile(req: Request) -> Result | None:
        return None

    mgr.controller("in-process").for_(kinds.CONFIG_MAP, namespace=namespace).build(reconcile)
    return mgr


async def holder(client: Client, namespace: str) -> str | None:
    lease = await client.get(kinds.LEASE, LEASE, namespace)
    h: str | None = lease["spec"].get("holderIdentity")
    return h


async def test_killed_leader_is_replaced_within_the_lease_and_clean_stop_releases(
    client: Client, namespace: str, kube_cluster: Cluster
) -> None:
    async with manager_proc(kube_cluster, namespace, "first") as first:
        await first.expect("LEADING")
        assert await holder(client, namespace) == "first"

        second = in_process_manager(client, namespace, "second")
        run = asyncio.create_task(second.run())
        try:
            await asyncio.sleep(4)  # two retry periods: the follower must not take a live lease
            assert not run.done()
            assert second.elector is not None and not second.elector.is_leader
            gauge = second.metrics.registry.get_sample_value("leader_election_master_status", {"name": LEASE})
            assert gauge == 0

            first.proc.kill()  # a crash: no release, the lease must run out
            killed_at = time.monotonic()
            await first.proc.wait()
            await asyncio.wait_for(second.wait_running(), LEASE_DURATION + 10)
            took = time.monotonic() - killed_at
            # Not before the lease (renewed <= 2 s before the kill) ran out, not long after it.
            assert LEASE_DURATION - 3 <= took <= LEASE_DURATION + 5, took
            assert await holder(client, namespace) == "second"
            assert (
                second.metrics.registry.get_sample_value("leader_election_master_status", {"name": LEASE})
                == 1
            )
        finally:
            second.stop()
            await asyncio.wait_for(run, 30)

    # A clean stop released the lease: the next candidate leads at once, not after 15 s.
    assert await holder(client, namespace) in (None, "")
    third = in_process_manager(client, namespace, "third")
    started = time.monotonic()
    run = asyncio.create_task(third.run())
    try:
        await asyncio.wait_for(third.wait_running(), 10)
        assert time.monotonic() - started < 5
    finally:
        third.stop()
        await asyncio.wait_for(run, 30)


async def test_lost_lease_stops_the_process_with_a_nonzero_exit(
    client: Client, namespace: str, kube_cluster: Cluster
) -> None:
    async with manager_proc(kube_cluster, namespace, "victim") as victim:
        await victim.expect("LEADING")
        lease = await client.get(kinds.LEASE, LEASE, namespace)
        lease["spec"]["holderIdentity"] = "usurper"  # another replica took over (e.g. after a partition)
        await client.update(kinds.LEASE, lease)
        await victim.expect("LOST", timeout=15)
        assert await asyncio.wait_for(victim.proc.wait(), 15) == 3


async def test_sigterm_drains_the_reconcile_in_flight_and_releases_the_lease(
    client: Client, namespace: str, kube_cluster: Cluster
) -> None:
    async with manager_proc(kube_cluster, namespace, "draining", "--sleep", "3") as mgr:
        await mgr.expect("LEADING")
        await client.create(kinds.CONFIG_MAP, {"metadata": {"name": "slow", "namespace": namespace}})
        await mgr.expect("START slow")
        mgr.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        await mgr.expect("DONE slow", timeout=20)  # the reconcile in flight finished...
        assert await asyncio.wait_for(mgr.proc.wait(), 20) == 0  # ...then the process exited cleanly
        assert time.monotonic() - sent < 15
        # stdout is read only on demand: collect the rest of what the process printed before exiting.
        await mgr.expect("STOPPED", timeout=5)
        assert mgr.lines.index("STOPPED") > mgr.lines.index("DONE slow")
    cm = await client.get(kinds.CONFIG_MAP, "slow", namespace)
    assert cm["metadata"]["annotations"]["reconciled-by"] == "draining"
    assert await holder(client, namespace) in (None, "")


async def test_sigterm_does_not_wait_past_the_drain_timeout(
    client: Client, namespace: str, kube_cluster: Cluster
) -> None:
    async with manager_proc(
        kube_cluster, namespace, "stuck", "--sleep", "300", "--drain-timeout", "2"
    ) as mgr:
        await mgr.expect("LEADING")
        await client.create(kinds.CONFIG_MAP, {"metadata": {"name": "stuck", "namespace": namespace}})
        await mgr.expect("START stuck")
        mgr.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert await asyncio.wait_for(mgr.proc.wait(), 20) == 0
        assert time.monotonic() - sent < 10
        assert "DONE stuck" not in mgr.lines

    async def no_stamp() -> bool:
        cm = await client.get(kinds.CONFIG_MAP, "stuck", namespace)
        return "reconciled-by" not in (cm["metadata"].get("annotations") or {})

    assert await eventually(no_stamp, timeout=5)


async def test_lease_is_renewed_while_reconciles_drain_after_stop(client: Client, namespace: str) -> None:
    # A 2 s lease and a reconcile that needs 4 s to finish after stop(): if renewal stopped with the
    # stop signal, a follower would take the lease while the old leader still writes.
    started = asyncio.Event()
    mgr = Manager(
        client,
        ManagerSettings(
            leader_election=LeaderElectionSettings(
                LEASE, namespace, "drainer", lease_duration=2.0, renew_deadline=1.5, retry_period=0.3
            ),
            probe_port=None,
            handle_signals=False,
        ),
    )

    async def reconcile(req: Request) -> Result | None:
        started.set()
        await asyncio.sleep(4)
        return None

    mgr.controller("draining").for_(kinds.CONFIG_MAP, namespace=namespace).build(reconcile)
    run = asyncio.create_task(mgr.run())
    try:
        await asyncio.wait_for(mgr.wait_running(), 30)
        await client.create(kinds.CONFIG_MAP, {"metadata": {"name": "slow", "namespace": namespace}})
        await asyncio.wait_for(started.wait(), 30)
        mgr.stop()
        follower = LeaderElector(
            client,
            LeaderElectionSettings(LEASE, namespace, "follower", lease_duration=2.0, retry_period=0.3),
        )
        assert not await follower._try_acquire_or_renew()  # observes the live lease
        await asyncio.sleep(3.0)  # past the lease: only a renewal during the drain keeps it ours
        assert not run.done()  # still draining
        assert not await follower._try_acquire_or_renew()
        assert await holder(client, namespace) == "drainer"
        await asyncio.wait_for(run, 30)
    finally:
        mgr.stop()
        if not run.done():
            await asyncio.wait_for(run, 30)
    assert await holder(client, namespace) in (None, "")  # released after the drain


async def test_a_graceful_stop_writes_the_event_counts_still_held(client: Client, namespace: str) -> None:
    # Repeats of an event are counted in memory and written at most once a minute: without the
    # shutdown hook, the repeats of the last minute before a stop were never written.
    from kaitopy.runtime import EventRecorder
    from kaitopy.runtime.events import EventRecorderSettings

    mgr = Manager(client, ManagerSettings(probe_port=None, handle_signals=False))
    recorder = EventRecorder(
        client, "runtime-test", settings=EventRecorderSettings(series_write_interval=600)
    )
    mgr.add_shutdown_hook(recorder.close)

    async def reconcile(req: Request) -> Result | None:
        if req.name != "noisy":
            return None  # the namespace's kube-root-ca.crt
        obj = await client.get(kinds.CONFIG_MAP, req.name, req.namespace)
        for _ in range(3):
            await recorder.event(obj, "Warning", "StillBroken", "the same thing, again")
        return None

    mgr.controller("recording").for_(kinds.CONFIG_MAP, namespace=namespace).build(reconcile)
    run = asyncio.create_task(mgr.run())
    try:
        await asyncio.wait_for(mgr.wait_running(), 30)
        await client.create(kinds.CONFIG_MAP, {"metadata": {"name": "noisy", "namespace": namespace}})

        async def recorded() -> list[dict[str, object]]:
            found = await client.list(kinds.EVENT, namespace=namespace)
            events = [e for e in found.items if e.get("reason") == "StillBroken"]
            assert events
            return events

        first = await eventually(recorded)
        assert "series" not in first[0]  # the repeats are only counted so far
    finally:
        mgr.stop()
        await asyncio.wait_for(run, 30)
    events = await recorded()
    assert len(events) == 1 and events[0]["series"]["count"] == 3  # type: ignore[index]
