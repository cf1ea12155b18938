"""Build contexts: for each image, a directory holding exactly the files its Dockerfile uses.

A staged context (instead of the repository root) keeps unrelated edits from changing an image's
content hash, and lets the host prepare what the build cannot do itself: compile the static pause
binary, copy Debian's static busybox, lay out the wheels. Files are hard-linked where possible.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from imagelib import paths

SKIP_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
SKIP_SUFFIXES = {".pyc", ".pyo"}
BUSYBOX = Path("/bin/busybox")
# -static: the image is FROM scratch, no libc to link against. -Os -s: a few hundred KB, not 1 MB.
CFLAGS = ["-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror"]


def fresh(context: Path) -> Path:
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    return context


def link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:  # another filesystem, or a file we may not link: copy instead
        shutil.copy2(src, dest)


def add_tree(src: Path, dest: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            if Path(name).suffix in SKIP_SUFFIXES:
                continue
            path = Path(dirpath) / name
            link(path, dest / path.relative_to(src))


def add_project(context: Path) -> None:
    """What `pip install .` needs from the repository: pyproject.toml, README.md, src/."""
    for name in ("pyproject.toml", "README.md"):
        link(paths.REPO / name, context / name)
    add_tree(paths.REPO / "src", context / "src")


def add_wheels(context: Path, wheelhouse: Path) -> None:
    dest = context / "docker" / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    for wheel in sorted(wheelhouse.glob("*.whl")):
        link(wheel, dest / wheel.name)


def add_locked_environment(context: Path, name: str) -> None:
    """The image's lock file (requirements/<name>.lock), the wheels it pins (hash-checked), and
    the SBOM generator its last stage runs (docker/sbom.py)."""
    from imagelib import pylock, wheels

    lock = pylock.lock_path(name)
    if not lock.exists():
        raise SystemExit(f"{lock} is missing: run hack/images.py lock")
    link(lock, context / "requirements" / lock.name)
    add_wheels(context, wheels.ensure_locked(name, lock))
    add_sbom_tool(context)


def add_sbom_tool(context: Path) -> None:
    link(paths.DOCKER / "sbom.py", context / "docker" / "sbom.py")


def add_host_sbom(context: Path, name: str, debian_packages: list[str]) -> None:
    """sbom.cdx.json for an image made of files copied or built on this host: the Debian packages
    they come from, at the versions installed here."""
    cmd = [
        sys.executable,
        str(paths.DOCKER / "sbom.py"),
        "--name",
        name,
        "-o",
        str(context / "sbom.cdx.json"),
    ]
    cmd += [f"--only-deb={p}" for p in debian_packages]
    subprocess.run(cmd, check=True, env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})


def add_pause(context: Path) -> None:
    src = paths.DOCKER / "pause" / "pause.c"
    subprocess.run(["cc", *CFLAGS, "-o", str(context / "pause"), str(src)], check=True)


def is_static(binary: Path) -> bool:
    """True when the ELF file has no PT_INTERP program header, i.e. needs no dynamic loader."""
    data = binary.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit ELF only: x86_64 is all this builds for
        return False
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3A], "little")
    offsets = (phoff + i * phentsize for i in range(phnum))
    return all(int.from_bytes(data[o : o + 4], "little") != 3 for o in offsets)  # 3: PT_INTERP


def add_busybox(context: Path) -> None:
    if not is_static(BUSYBOX):
        raise SystemExit(f"{BUSYBOX} is not a static binary: apt-get install -y busybox-static")
    shutil.copy2(BUSYBOX, context / "busybox")
