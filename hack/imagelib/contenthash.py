"""The cache key of an image: a hash of everything that goes into its build.

The Dockerfile, every file of the (staged) build context with its path, executable bit and bytes,
symlink targets, the base image's ID and the build arguments. Timestamps and owners are left out
on purpose: a fresh checkout or a re-staged context must hash the same as the old one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

# Tags carry this many hex digits: short enough to read, far too many to collide by chance.
TAG_LEN = 16


def _files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            yield Path(dirpath) / name


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def context_lines(context: Path) -> Iterator[str]:
    """One line per file: path, kind (x: executable, f: file, l: symlink) and content digest or target."""
    for path in _files(context):
        rel = path.relative_to(context).as_posix()
        if path.is_symlink():
            yield f"l {rel} {os.readlink(path)}"
        else:
            kind = "x" if os.access(path, os.X_OK) else "f"
            yield f"{kind} {rel} {_file_digest(path)}"


def image_hash(
    dockerfile: Path,
    context: Path,
    base_id: str = "",
    build_args: Mapping[str, str] | None = None,
) -> str:
    h = hashlib.sha256()
    h.update(b"dockerfile\0" + dockerfile.read_bytes() + b"\0")
    for line in context_lines(context):
        h.update(line.encode() + b"\n")
    h.update(f"base\0{base_id}\0".encode())
    for key, value in sorted((build_args or {}).items()):
        h.update(f"arg\0{key}={value}\0".encode())
    return h.hexdigest()[:TAG_LEN]
