"""Progress output: timed steps, and subprocesses whose output is streamed with the elapsed time,
so a long step (mmdebstrap, pip inside a build) visibly moves instead of looking hung."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

# A step that prints nothing for this long gets a "still running" line.
HEARTBEAT_S = 20.0


def say(msg: str) -> None:
    print(msg, flush=True)


@contextmanager
def step(title: str) -> Iterator[None]:
    t0 = time.monotonic()
    say(f"==> {title}")
    try:
        yield
    finally:
        say(f"<== {title} ({time.monotonic() - t0:.1f}s)")


def run(
    cmd: Sequence[str],
    *,
    cwd: Path | None = None,
    quiet: bool = False,
    tail: int = 40,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run `cmd`, streaming its output prefixed with the elapsed time (only a heartbeat when quiet).

    Raises CalledProcessError with the last `tail` lines when it fails, so a quiet run still explains itself.
    """
    t0 = time.monotonic()
    proc = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    last: list[str] = []
    quiet_since = time.monotonic()
    while True:
        try:
            line = lines.get(timeout=HEARTBEAT_S)
        except queue.Empty:
            say(f"    [{time.monotonic() - t0:5.0f}s] ... still running {cmd[0]}")
            continue
        if line is None:
            break
        last = [*last[-(tail - 1) :], line]
        if not quiet:
            say(f"    [{time.monotonic() - t0:5.0f}s] {line}")
        elif time.monotonic() - quiet_since > HEARTBEAT_S:
            quiet_since = time.monotonic()
            say(f"    [{time.monotonic() - t0:5.0f}s] {line[:120]}")
    rc = proc.wait()
    if rc != 0:
        if quiet:
            sys.stderr.write("\n".join(last) + "\n")
        raise subprocess.CalledProcessError(rc, list(cmd), output="\n".join(last))
