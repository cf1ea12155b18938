"""One build at a time per image cache: two builds would re-stage the same context directories
under each other (tests and `make images` may well run at once on a shared machine)."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager

from imagelib import paths
from imagelib.progress import say


@contextmanager
def exclusive() -> Iterator[None]:
    path = paths.cache_dir() / "build.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another image build to finish ({path})")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield  # the lock goes with the file descriptor when the file closes
