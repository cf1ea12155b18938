"""The machine-level steps a local node needs: commands, detached processes, mounts, cgroups.
Async throughout (commands run as subprocesses; file scans are small), so the provisioner's
event loop keeps serving other NodeClaims while a node starts or stops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)
CGROUP_V1 = Path("/sys/fs/cgroup")


class CommandError(RuntimeError):
    pass


async def run(*argv: str, check: bool = True, timeout: float = 60.0) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        if not check:
            return ""
        raise CommandError(f"{argv[0]} is not installed (hack/ensure-packages.sh installs it)") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CommandError(f"{' '.join(argv)}: no answer within {timeout:.0f}s") from None
    if check and proc.returncode != 0:
        raise CommandError(
            f"{' '.join(argv)} exited {proc.returncode}: {err.decode(errors='replace').strip()}"
        )
    return out.decode(errors="replace")


# -- processes ------------------------------------------------------------------------------------


async def spawn_detached(
    argv: Sequence[str], log_file: Path, env: dict[str, str] | None = None, exec_timeout: float = 10.0
) -> int:
    """Start a daemon in its own session: a node outlives the provisioner that launched it, as a
    cloud VM outlives the controller that asked for it. Returns the PID once the process shows
    its own command line (or has already ended)."""
    pid = _popen_detached(argv, log_file, env)
    # Popen returns when the exec has begun, not when it is done: the kernel sets the new
    # program's arguments last, and until then /proc/<pid>/cmdline is empty (for a Go binary
    # such as the kubelet, nearly always at this point). `alive` reads the command line, so a
    # check made now would call the new daemon dead and start a second one.
    for _ in range(max(1, int(exec_timeout / 0.005))):
        if cmdline(pid) or _state(pid) in ("", "Z"):
            break
        await asyncio.sleep(0.005)
    return pid


def _popen_detached(argv: Sequence[str], log_file: Path, env: dict[str, str] | None) -> int:
    # Popen, not asyncio's subprocess: asyncio's child watcher would reap the daemon when it
    # exits, and exit_status could no longer say how it ended. The fork and exec take a moment.
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            close_fds=True,
        )
    return proc.pid


def log_tail(path: Path, lines: int = 5, max_bytes: int = 8192) -> str:
    """The last non-empty lines of a daemon's log, for an error that says why it stopped."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - max_bytes))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def alive(pid: int, marker: str) -> bool:
    """PID runs and its command line mentions `marker` (a recycled PID never matches)."""
    if pid <= 0 or _state(pid) in ("", "Z"):
        return False
    return any(marker in part for part in cmdline(pid))


def _state(pid: int) -> str:
    """The process's state letter (R, S, Z, ...); "" when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[0]


def exit_status(pid: int) -> str:
    """How a child of this process ended (reaping it), or that it is not known: a node started by
    an earlier provisioner is not our child."""
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        return "not a child of this process; status unknown"
    if reaped == 0:
        return "still running"
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def pids_mentioning(marker: str) -> list[int]:
    """Every process whose command line mentions `marker`: how stray shims of a node are found."""
    found = []
    for entry in Path("/proc").iterdir():
        own = entry.name == str(os.getpid())
        if entry.name.isdigit() and not own and any(marker in p for p in cmdline(int(entry.name))):
            found.append(int(entry.name))
    return found


async def stop(pid: int, marker: str, grace_s: float = 10.0) -> None:
    """SIGTERM the process's group, SIGKILL what is left after the grace."""
    if not alive(pid, marker):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    if not await wait_gone(pid, marker, grace_s):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        await wait_gone(pid, marker, 30.0)


async def wait_gone(pid: int, marker: str, timeout: float) -> bool:
    """Poll until the process is gone (there is nothing to await for a process we did not
    start in this process); False when it still runs after `timeout`."""
    for _ in range(max(1, int(timeout / 0.1))):
        if not alive(pid, marker):
            return True
        await asyncio.sleep(0.1)
    return not alive(pid, marker)


async def kill_all(pids: Sequence[int], marker: str) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        await wait_gone(pid, marker, 5.0)


# -- mounts and cgroups ---------------------------------------------------------------------------


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, deepest (latest) first, from /proc/self/mountinfo."""
    prefix = str(root)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return list(reversed(found))


async def unmount_all(root: Path) -> None:
    for _ in range(5):  # a lazy unmount can reveal the mount below it
        points = mounts_under(root)
        if not points:
            return
        for point in points:
            await run("umount", "-l", point, check=False)


def cgroup_dirs(relative: str) -> list[Path]:
    """The directory of a cgroup in every mounted v1 hierarchy and the unified one."""
    rel = relative.strip("/")
    if not CGROUP_V1.is_dir():
        return []
    return [h / rel for h in sorted(CGROUP_V1.iterdir()) if h.is_dir()]


def ensure_cgroup(relative: str) -> None:
    """The kubelet insists its --cgroup-root exists in every hierarchy before it starts."""
    for d in cgroup_dirs(relative):
        with contextlib.suppress(OSError):
            d.mkdir(parents=True, exist_ok=True)


async def remove_cgroup(relative: str) -> None:
    """Kill whatever still runs in the cgroup tree, then remove it, leaves first."""
    for top in cgroup_dirs(relative):
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*dirs, top]:
            procs = d / "cgroup.procs"
            with contextlib.suppress(OSError, ValueError):
                for line in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(int(line), signal.SIGKILL)
        for d in [*dirs, top]:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    await asyncio.sleep(0.1)


def remove_empty_cgroup(relative: str) -> None:
    """The parent of the nodes' cgroup roots, once no node is left under it."""
    for d in cgroup_dirs(relative):
        with contextlib.suppress(OSError):
            d.rmdir()


# -- machine-wide daemons (kube-proxy, the cluster DNS): a state folder with a pid file --------------


def record_pid(state: Path, pid: int) -> None:
    (state / "pid").write_text(json.dumps({"pid": pid}))


def recorded_pid(state: Path) -> int:
    """The pid a daemon's state folder records; 0 when there is none."""
    try:
        return int(json.loads((state / "pid").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return 0
