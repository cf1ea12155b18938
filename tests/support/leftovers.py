"""Finding processes a test left behind.

The test process makes itself a child subreaper (Linux): a process orphaned by its parent's death
(vLLM's engine core when the server dies first) is re-parented to it instead of to init, so it stays
a descendant. A descendant that was not there before a test and is still there after it is a
leftover. Descendants, not command lines, decide: other sessions on the machine may run vLLM too,
and only this session's processes are its business. (Command lines would not do anyway: vLLM
renames its processes, overwriting the memory /proc shows their command line and environment from.)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36


def set_subreaper(on: bool) -> bool:
    """Make this process a child subreaper (or stop being one); False where Linux's prctl is missing."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)) == 0


def _stat(pid: str) -> tuple[str, int] | None:
    """(state, parent pid) from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return fields[0], int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(root: int | None = None) -> dict[int, str]:
    """pid -> command line of every live (not zombie) descendant of `root` (default: this process)."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    states: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(entry.name)
        if stat is not None:
            states[int(entry.name)] = stat[0]
            children.setdefault(stat[1], []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        if states.get(pid) == "Z":
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found[pid] = cmdline.strip()
    return found


def leftovers(before: set[int], wait: float = 15.0) -> dict[int, str]:
    """Descendants not in `before`, after giving them `wait` s to exit on their own."""
    deadline = time.monotonic() + wait
    while True:
        left = {pid: cmd for pid, cmd in descendants().items() if pid not in before}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)


def kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
