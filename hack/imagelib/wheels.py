"""Wheelhouses: every wheel an image installs, downloaded on the host with the host's pip.

Why on the host: pip inside the build has no access to the host's pip configuration (certificates,
proxies, find-links), and downloading once on the host lets repeated builds reuse the files. The
image's pip then installs with --no-index from this directory. A wheelhouse is keyed by what was
asked for (requirements, target platform), so an unchanged request needs no network at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from imagelib import paths
from imagelib.progress import run, step

# The images' Python: Debian bookworm's 3.11 (or python:3.11-slim) on x86_64 glibc 2.36.
PYTHON_VERSION = "3.11"
# pip matches --platform tags literally, so every manylinux tag a glibc 2.36 system accepts is listed.
PLATFORMS = [
    *(f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def find_links() -> Path | None:
    """Local wheels (torch's CPU build) shared by the worktrees: $KAITOPY_WHEELS or ../shared/wheels."""
    given = os.environ.get("KAITOPY_WHEELS")
    path = Path(given) if given else paths.REPO.parent / "shared" / "wheels"
    return path if path.is_dir() else None


def project_requirements(extras: Sequence[str] = ()) -> list[str]:
    """kaitopy's dependencies (and the extras'), plus what building its wheel needs."""
    project = tomllib.loads((paths.REPO / "pyproject.toml").read_text())
    reqs = list(project["build-system"]["requires"]) + list(project["project"]["dependencies"])
    optional = project["project"].get("optional-dependencies", {})
    for extra in extras:
        reqs += optional[extra]
    return reqs


def _pip_args(requirements: Sequence[str]) -> list[str]:
    return [*_platform_args(any(r.startswith("torch") for r in requirements)), *requirements]


def _platform_args(needs_torch: bool) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for abi in ("cp311", "abi3", "none"):
        args += ["--abi", abi]
    for platform in PLATFORMS:
        args += ["--platform", platform]
    links = find_links()
    if links:
        args += ["--find-links", str(links)]
    if needs_torch and not _has_local_torch(links):
        # Only when the CPU build is not on disk: PyPI's torch is the CUDA one.
        args += ["--extra-index-url", TORCH_CPU_INDEX]
    return args


def _has_local_torch(links: Path | None) -> bool:
    return bool(links and any(links.glob("torch-*+cpu-*.whl")))


def ensure(name: str, requirements: Sequence[str]) -> Path:
    """A directory holding the wheels for `requirements` (downloaded once per distinct request)."""
    args = _pip_args(requirements)
    key = hashlib.sha256(json.dumps(args).encode()).hexdigest()[:16]
    house = paths.cache_dir() / "wheels" / f"{name}-{key}"
    if (house / ".complete").exists():
        return house
    tmp = house.with_name(house.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with step(f"pip download {len(requirements)} requirements for {name} into {house}"):
        run([sys.executable, "-m", "pip", "download", "--progress-bar", "off", "--dest", str(tmp), *args])
    (tmp / ".complete").write_text(json.dumps(args) + "\n")
    shutil.rmtree(house, ignore_errors=True)
    tmp.rename(house)
    return house


def ensure_locked(name: str, lock: Path) -> Path:
    """A directory holding exactly the wheels `lock` pins, each checked against the lock's sha256
    (pip's hash-checking mode); downloaded once per distinct lock content."""
    text = lock.read_text()
    needs_torch = any(line.startswith("torch==") for line in text.splitlines())
    args = [*_platform_args(needs_torch), "--no-deps", "--require-hashes", "-r", str(lock)]
    key = hashlib.sha256((json.dumps(args[:-1]) + text).encode()).hexdigest()[:16]
    house = paths.cache_dir() / "wheels" / f"{name}-locked-{key}"
    if (house / ".complete").exists():
        return house
    tmp = house.with_name(house.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with step(f"pip download {lock.name} (hash-checked) for {name} into {house}"):
        run([sys.executable, "-m", "pip", "download", "--progress-bar", "off", "--dest", str(tmp), *args])
    (tmp / ".complete").write_text(json.dumps(args) + "\n")
    shutil.rmtree(house, ignore_errors=True)
    tmp.rename(house)
    return house
