"""The vLLM child's output, passed on to the pod's log with the repeats taken out.

vLLM and torch print the same warning once per process, per layer or per step (a start on CPU printed
122 dtype warnings); a log that repeats itself hides what matters. Each distinct warning is passed on
once, keyed by its text without the timestamp and process id; everything else passes unchanged.

One known false alarm is left out too, and only while the front is stopping the child: vLLM's server
logs its output handler's EngineDeadError, with a traceback, at ERROR when its engine core goes down
as asked, which made every clean shutdown look like a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from typing import BinaryIO

# "(EngineCore pid=7630) ", "WARNING 12-04 10:03:59 ", "[W1204 09:54:32.705252883 utils.cpp:68]"
_VARIABLE = re.compile(
    r"\((?:[\w.-]+ )?pid=\d+\)\s*|\d\d-\d\d \d\d:\d\d:\d\d(?:[.,]\d+)?|\[W\d{4} \d\d:\d\d:\d\d\.\d+ |"
    r"\b\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?"
)
_WARNING = re.compile(r"\bWARN(?:ING)?\b|Warning:|warnings\.warn\(|\[W\d{4} ")
# vLLM's AsyncLLM output handler, every line of whose report carries its source location.
_SHUTDOWN_NOISE = re.compile(r"\bERROR\b.*\[async_llm\.py:\d+\]")


class RepeatFilter:
    """Says which lines to pass on: every line but a warning already passed on once."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self.dropped = 0
        self.shutdown_dropped = 0
        # Set by the engine once it has asked the child to stop.
        self.stopping = False

    def keep(self, line: str) -> bool:
        if self.stopping and _SHUTDOWN_NOISE.search(line):
            self.shutdown_dropped += 1
            return False
        if not _WARNING.search(line):
            return True
        key = _VARIABLE.sub("", line).strip()
        if key in self._seen:
            self.dropped += 1
            return False
        self._seen.add(key)
        return True


async def relay(stream: asyncio.StreamReader, repeats: RepeatFilter, out: BinaryIO | None = None) -> None:
    """Copy `stream` to `out` (default: this process's stderr) line by line until it closes."""
    sink = out if out is not None else sys.stderr.buffer
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # a line over the reader's limit: pass on what is there
            line = await stream.read(2**16)
        if not line:
            break
        if repeats.keep(line.decode(errors="replace")):
            with contextlib.suppress(OSError, ValueError):
                sink.write(line)
                sink.flush()
