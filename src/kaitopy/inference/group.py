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

Two rules keep a restart from bouncing back and forth between the ranks:
  - a worker starts its vLLM only after it has seen its leader's server, so it joins the rendezvous
    of the leader instance it watches, and restarts when that instance goes;
  - the leader judges its workers only once it serves (its group formed). While it waits for the
    group, a worker that restarts is taken as the worker now, not as a reason to restart again;
    a group that cannot form fails vLLM's start, and the leader restarts through that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

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
    peers: Mapping[str, Peer],
    answers: Mapping[str, str | None],
    now: float,
    grace: float,
    armed: bool = True,
) -> tuple[dict[str, Peer], str | None]:
    """The peers' new state and the reason the group must restart, if it must.

    `answers` holds each peer's instance id from this round, None where it did not answer. Not
    `armed`, a changed instance becomes the one remembered and nothing restarts."""
    state = dict(peers)
    for url, instance in answers.items():
        peer = state.get(url, Peer())
        if instance is not None:
            if armed and peer.instance is not None and instance != peer.instance:
                return state, f"{url} restarted (instance {peer.instance} is now {instance})"
            state[url] = Peer(instance=instance, last_answer=now)
            continue
        silent = now - peer.last_answer if peer.last_answer is not None else 0.0
        if armed and peer.instance is not None and silent > grace:
            return state, f"{url} has not answered for {silent:.0f} s (grace {grace:.0f} s)"
        state[url] = peer
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


class GroupWatch:
    """Ask every peer each `interval`; call `on_restart(reason)` once when the group must restart.

    `seen_all` is set once every peer has answered; `armed()` says whether to judge yet."""

    def __init__(
        self,
        urls: list[str],
        on_restart: Callable[[str], None],
        *,
        armed: Callable[[], bool] = lambda: True,
        interval: float = POLL_INTERVAL_S,
        grace: float = SILENCE_GRACE_S,
    ) -> None:
        self.urls = urls
        self.seen_all = asyncio.Event()
        self._on_restart = on_restart
        self._armed = armed
        self._interval = interval
        self._grace = grace

    async def run(self) -> None:
        now = asyncio.get_running_loop().time
        peers: dict[str, Peer] = {}
        log.info(
            "multi-node: watching %s (a restart, or %.0f s of silence, restarts the group)",
            ", ".join(self.urls),
            self._grace,
        )
        async with aiohttp.ClientSession(trust_env=False) as session:
            while True:
                found = await asyncio.gather(*(instance_of(session, url) for url in self.urls))
                answers = dict(zip(self.urls, found, strict=True))
                peers, reason = judge(peers, answers, now(), self._grace, self._armed())
                if all(p.instance is not None for p in peers.values()):
                    self.seen_all.set()
                if reason is not None:
                    log.error("multi-node: %s; this server exits so the group restarts as one", reason)
                    self._on_restart(reason)
                    return
                await asyncio.sleep(self._interval)
