"""A real gzip bomb: zeros compressed at the highest level, written a chunk at a time so the test
never holds the expansion. 1 GiB of zeros becomes about 1 MiB."""

from __future__ import annotations

import zlib
from pathlib import Path

MiB = 1 << 20


def gzip_bomb(path: Path, expands_to: int) -> Path:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MiB)
    with path.open("wb") as out:
        for _ in range(expands_to // MiB):
            out.write(packer.compress(zeros))
        out.write(packer.flush())
    return path
