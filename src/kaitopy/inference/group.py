"""A multi-node group restarts as one.

vLLM's leader does not notice a dead worker until a request needs it (its /health stayed 200 for
minutes after a worker was killed), and a worker that outlives its leader waits for it forever. So
each pod's `kaitopy serve` watches the others' servers: the leader watches every worker, a worker its
leader. Each server names itself in /health with an instance id drawn at start. A peer whose id
changed (it restarted) or that has not answered for the grace period (its pod is gone) makes this
server exit non-zero; its container restarts, its own id changes, and the rest of the group follows,
so every rank starts again together and rejoins one rendezvous.

A peer never seen yet is not judged: pods of a group start at different times (scheduling, image
pulls), and until every rank has joined, vLLM's own rendezvous holds the leader back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

import aiohttp

log = logging.getLogger(__name__)

# How often the peers are asked, and how long one may be silent before the group restarts. The
# grace outlasts a pod's readiness probe period several times over and a brief network blip.
POLL_INTERVAL_S = 5.0
SILENCE_GRACE_S = 30.0


@dataclass(frozen=True)
class Peer:
    """What this server knows of one peer: the instance it first saw, and when it last answered."""

    instance: str | None = None
    last_answer: float | None = None


def judge(
    peers: Mapping[str, Peer], answers: Mapping[str, str | None], now: float, grace: float
) -> tuple[dict[str, Peer], str | None]:
    """The peers' new state and the reason the group must restart, if it must.

    `answers` holds each peer's instance id from this round, None where it did not answer."""
    state = dict(peers)
    for url, instance in answers.items():
        peer = state.get(url, Peer())
        if instance is not None:
            if peer.instance is not None and instance != peer.instance:
                return state, f"{url} restarted (instance {peer.instance} is now {instance})"
            state[url] = Peer(instance=instance, last_answer=now)
            continue
        if peer.instance is not None and peer.last_answer is not None and now - peer.last_answer > grace:
            return state, f"{url} has not answered for {now - peer.last_answer:.0f} s (grace {grace:.0f} s)"
        state[url] = replace(peer)
    return state, None


async def instance_of(session: aiohttp.ClientSession, url: str) -> str | None:
    """The instance id in a peer server's /health (any status: a loading peer names itself too)."""
    try:
        async with session.get(f"{url}/health", timeout=aiohttp.ClientTimeout(total=5)) as r:
            body = await r.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    instance = body.get("instance") if isinstance(body, dict) else None
    return instance if isinstance(instance, str) and instance else None


async def watch(
    urls: list[str],
    on_restart: Callable[[str], Awaitable[None] | None],
    *,
    interval: float = POLL_INTERVAL_S,
    grace: float = SILENCE_GRACE_S,
    clock: Callable[[], float] | None = None,
) -> None:
    """Ask every peer each `interval`; call `on_restart(reason)` once when the group must restart."""
    now = clock or asyncio.get_running_loop().time
    peers: dict[str, Peer] = {}
    log.info(
        "multi-node: watching %s (a restart or %.0f s of silence restarts the group)", ", ".join(urls), grace
    )
    async with aiohttp.ClientSession(trust_env=False) as session:
        while True:
            found = await asyncio.gather(*(instance_of(session, url) for url in urls))
            peers, reason = judge(peers, dict(zip(urls, found, strict=True)), now(), grace)
            if reason is not None:
                log.error("multi-node: %s; this server exits so the group restarts as one", reason)
                result = on_restart(reason)
                if result is not None:
                    await result
                return
            await asyncio.sleep(interval)
