"""The multi-node group watch: when a peer's restart or silence restarts this rank (group.judge)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from kaitopy.inference.group import GroupWatch, Peer, judge

A, B = "http://ws-1.h:5000", "http://ws-2.h:5000"
GRACE = 30.0


@pytest.mark.parametrize(
    ("peers", "answers", "now", "reason"),
    [
        # First contact: remembered, no restart.
        ({}, {A: "i1", B: "j1"}, 10.0, None),
        # Same instances again: fine.
        ({A: Peer("i1", 10.0), B: Peer("j1", 10.0)}, {A: "i1", B: "j1"}, 15.0, None),
        # A new instance behind the same address: that peer restarted.
        ({A: Peer("i1", 10.0)}, {A: "i2"}, 15.0, f"{A} restarted (instance i1 is now i2)"),
        # Silent within the grace: wait.
        ({A: Peer("i1", 10.0)}, {A: None}, 10.0 + GRACE, None),
        # Silent past the grace: its pod is gone.
        ({A: Peer("i1", 10.0)}, {A: None}, 10.0 + GRACE + 1, f"{A} has not answered for 31 s (grace 30 s)"),
        # Never seen: not judged, however long (pods start at different times).
        ({}, {A: None}, 10_000.0, None),
        ({A: Peer()}, {A: None}, 10_000.0, None),
        # One peer fine, the other restarted: the group restarts.
        (
            {A: Peer("i1", 10.0), B: Peer("j1", 10.0)},
            {A: "i1", B: "j2"},
            15.0,
            f"{B} restarted (instance j1 is now j2)",
        ),
    ],
)
def test_judge(
    peers: dict[str, Peer], answers: dict[str, str | None], now: float, reason: str | None
) -> None:
    _, got = judge(peers, answers, now, GRACE)
    assert got == reason


def test_judge_keeps_first_instance_and_last_answer() -> None:
    state, _ = judge({}, {A: "i1"}, 10.0, GRACE)
    assert state[A] == Peer("i1", 10.0)
    state, _ = judge(state, {A: None}, 20.0, GRACE)
    assert state[A] == Peer("i1", 10.0)  # silence does not move the last answer
    state, _ = judge(state, {A: "i1"}, 25.0, GRACE)
    assert state[A] == Peer("i1", 25.0)


def test_unarmed_takes_the_new_instance_and_never_restarts() -> None:
    # The leader while its group forms: a worker that restarts is the worker now.
    state, reason = judge({A: Peer("i1", 10.0)}, {A: "i2"}, 15.0, GRACE, armed=False)
    assert reason is None and state[A] == Peer("i2", 15.0)
    _, reason = judge(state, {A: None}, 15.0 + 10 * GRACE, GRACE, armed=False)
    assert reason is None
    # Armed later, it judges from the instance it took.
    _, reason = judge(state, {A: "i2"}, 20.0, GRACE)
    assert reason is None


async def peer_server(instances: list[str]) -> tuple[web.AppRunner, str]:
    """A peer's /health on loopback, naming instances[-1] (the test swaps it to fake a restart)."""

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "loading", "instance": instances[-1]}, status=503)

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def test_watch_sees_a_peer_restart_over_http() -> None:
    instances = ["a1"]
    runner, url = await peer_server(instances)
    reasons: list[str] = []
    watch = GroupWatch([url], reasons.append, interval=0.05, grace=5.0)
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.wait_for(watch.seen_all.wait(), 5)  # a worker would start its vLLM now
        assert not task.done()
        instances.append("a2")  # the peer restarted
        await asyncio.wait_for(task, 5)
        assert reasons == [f"{url} restarted (instance a1 is now a2)"]
    finally:
        task.cancel()
        await runner.cleanup()


async def test_watch_sees_a_peer_go_silent_over_http() -> None:
    runner, url = await peer_server(["a1"])
    reasons: list[str] = []
    watch = GroupWatch([url], reasons.append, interval=0.05, grace=0.3)
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.wait_for(watch.seen_all.wait(), 5)
        await runner.cleanup()  # the peer's pod is gone
        await asyncio.wait_for(task, 5)
        assert len(reasons) == 1 and reasons[0].startswith(f"{url} has not answered for")
    finally:
        task.cancel()


async def test_unarmed_watch_never_restarts() -> None:
    instances = ["a1"]
    runner, url = await peer_server(instances)
    reasons: list[str] = []
    watch = GroupWatch([url], reasons.append, armed=lambda: False, interval=0.05, grace=0.1)
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.wait_for(watch.seen_all.wait(), 5)
        instances.append("a2")
        await asyncio.sleep(0.3)
        await runner.cleanup()
        await asyncio.sleep(0.5)
        assert reasons == [] and not task.done()
    finally:
        task.cancel()
