"""How the local provider tells why a node agent stopped: exit codes and signals of its children."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from kaitopy.provisioner.local import system


def finished(argv: list[str]) -> int:
    proc = subprocess.Popen(argv)
    pid = proc.pid
    proc.returncode = 0  # keep Popen from reaping it: exit_status must do that itself
    for _ in range(200):
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[-1].split()[0] == "Z":
                return pid
        time.sleep(0.01)
    raise AssertionError("the child did not finish")


def test_exit_code_and_signal_of_a_child_are_reported() -> None:
    assert system.exit_status(finished(["sh", "-c", "exit 3"])) == "exit code 3"
    assert system.exit_status(finished(["sh", "-c", "kill -9 $$"])) == "killed by SIGKILL"


def test_a_process_that_is_not_our_child_is_said_to_be_unknown() -> None:
    assert "status unknown" in system.exit_status(1)


def test_alive_needs_the_marker_in_the_command_line() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        # Until the child has exec'd, its command line is the parent's (or empty).
        for _ in range(200):
            if system.cmdline(proc.pid)[:1] == ["sleep"]:
                break
            time.sleep(0.01)
        assert system.alive(proc.pid, "sleep")
        assert not system.alive(proc.pid, "kubelet")
    finally:
        proc.kill()
        proc.wait()
    assert not system.alive(proc.pid, "sleep")


async def test_a_spawned_daemon_is_alive_as_soon_as_spawn_returns(tmp_path: Path) -> None:
    # Popen returns while the kernel is still inside the exec, when the command line reads empty
    # (most spawns here): a liveness check right after the spawn must not call the daemon dead.
    # The launch did just that and started a second kubelet on a taken port.
    marker = "sleep"
    pids = []
    try:
        for _ in range(20):
            pid = await system.spawn_detached(["sleep", "30"], tmp_path / "daemon.log")
            pids.append(pid)
            assert system.alive(pid, marker)
    finally:
        await system.kill_all(pids, marker)
    assert not any(system.alive(pid, marker) for pid in pids)


def test_a_log_tail_keeps_the_last_lines_that_say_something(tmp_path: Path) -> None:
    log = tmp_path / "containerd.log"
    log.write_text("starting\n\nloading plugin\n  \nfailed to listen: address in use\n")
    assert system.log_tail(log, lines=2) == "loading plugin | failed to listen: address in use"
    assert system.log_tail(tmp_path / "missing.log") == ""
