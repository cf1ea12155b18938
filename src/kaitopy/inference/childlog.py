"""The vLLM child's output, passed on to the pod's log with the repeats taken out.

vLLM and torch print the same warning once per process, per layer or per step (a start on CPU printed
122 dtype warnings); a log that repeats itself hides what matters. Each distinct warning is passed on
once, keyed by its text without the timestamp and process id; everything else passes unchanged.
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


class RepeatFilter:
    """Says which lines to pass on: every line but a warning already passed on once."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self.dropped = 0

    def keep(self, line: str) -> bool:
        if not _WARNING.search(line):
            return True
        key = _VARIABLE.sub("", line).strip()
        if key in self._seen:
            self.dropped += 1
            return False
        self._seen.add(key)
        return True


async def relay(stream: asyncio.StreamReader, out: BinaryIO | None = None) -> RepeatFilter:
    """Copy `stream` to `out` (default: this process's stderr) line by line until it closes."""
    sink = out if out is not None else sys.stderr.buffer
    repeats = RepeatFilter()
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
    return repeats
