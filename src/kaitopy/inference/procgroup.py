"""A child process that takes its whole process tree with it when it stops.

vLLM's OpenAI server starts an engine-core process and worker processes of its own (multiprocessing).
Signalling only the server leaves them running, orphaned, when it dies first or ignores SIGTERM. So
the child starts as the leader of a new process group (which its descendants inherit) and is
stopped by signalling the group: SIGTERM, then SIGKILL after a bound, and the stop
only returns once no process of the group is left. The child also gets SIGTERM if this process dies
without stopping it (Linux's parent-death signal), so a killed model server leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the forked child before exec: SIGTERM when the parent thread dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def group_members(pgid: int, proc: Path = Path("/proc")) -> list[int]:
    """The live processes (zombies excluded) whose process group is `pgid`, read from /proc."""
    members: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
        fields = stat.rpartition(")")[2].split()
        if len(fields) >= 3 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


async def start(*argv: str, env: dict[str, str] | None = None, **kwargs: Any) -> asyncio.subprocess.Process:
    """`argv` as the leader of a new process group (its pid is the group id), in this process's session.

    A group, not a new session: on Linux with autogroup scheduling (sched_autogroup_enabled=1, the
    default of most distributions) a new session is also a new scheduler group, and vLLM's tree then
    competed with the rest of the machine as one entity. Measured on the 2-core development machine
    under load: time to first token 60-65 ms against bare vLLM's 8-9 ms in a new session, 10 ms in a
    group (docs/vllm-engine.md). killpg needs only the group.
    """
    return await asyncio.create_subprocess_exec(
        *argv, env=env, process_group=0, preexec_fn=_die_with_parent, **kwargs
    )


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _gone(pgid: int, timeout: float, members: Callable[[int], list[int]]) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if not members(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)


async def stop_group(
    child: asyncio.subprocess.Process,
    *,
    grace: float = 20.0,
    term_wait: float = 5.0,
    kill_wait: float = 10.0,
    members: Callable[[int], list[int]] = group_members,
) -> bool:
    """Stop `child` and every process of its group; True once none is left.

    SIGTERM to the leader first, which is vLLM's orderly way down (its server stops its engine core;
    signalling them all at once races that shutdown into an EngineDeadError traceback). Then whatever
    of the group is left after `grace` s gets SIGTERM, and SIGKILL `term_wait` s later. Also right
    when the leader is already dead: its engine core and workers may still run, ignoring SIGTERM.
    """
    pgid = child.pid
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(child.wait(), grace)
    if members(pgid):
        _signal_group(pgid, signal.SIGTERM)
        if not await _gone(pgid, term_wait, members):
            left = members(pgid)
            log.warning(
                "%d process(es) of the vLLM group still ran %.0f s after SIGTERM; killing them: %s",
                len(left),
                term_wait,
                " ".join(map(str, left)),
            )
            _signal_group(pgid, signal.SIGKILL)
    if child.returncode is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(child.wait(), kill_wait)
    gone = await _gone(pgid, kill_wait, members)
    if not gone:
        log.error("processes of the vLLM group %d are still running after SIGKILL", pgid)
    return gone
