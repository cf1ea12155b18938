"""The Python base image, made from Debian packages because no image hub is reachable here.

mmdebstrap writes a minimal bookworm root (python3 3.11, venv, pip, CA certificates) as a tar; a
`FROM scratch` + `ADD rootfs.tar /` Dockerfile turns it into an image in buildah's store. Its tag is
a hash of the inputs below, so an unchanged recipe is never rebuilt; it is also pushed to the loopback
registry, from where it is pulled back if buildah's store was wiped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time

from imagelib import buildah, paths, refs, remote
from imagelib.progress import run, say, step

NAME = "base-python"
LOCAL = f"localhost/{paths.NAMESPACE}/{NAME}"
STABLE_TAG = "bookworm"
DOCKERFILE = paths.DOCKER / "base" / "Dockerfile"

SUITE = "bookworm"
SNAPSHOT_ENV = "KAITOPY_DEBIAN_SNAPSHOT"
"""A snapshot.debian.org timestamp (e.g. 20261201T000000Z): the base is then built from the archive
as it was at that moment, the same packages on every build; unset, from the live mirrors (the
versions installed are recorded in each image's SBOM either way)."""


def mirrors() -> list[str]:
    snapshot = os.environ.get(SNAPSHOT_ENV, "").strip()
    if not snapshot:
        return [
            "deb http://deb.debian.org/debian bookworm main",
            "deb http://deb.debian.org/debian bookworm-updates main",
            "deb http://deb.debian.org/debian-security bookworm-security main",
        ]
    if not re.fullmatch(r"\d{8}T\d{6}Z", snapshot):
        raise SystemExit(
            f"{SNAPSHOT_ENV}={snapshot!r}: expected a snapshot.debian.org time, e.g. 20261201T000000Z"
        )
    # check-valid-until=no: a snapshot's Release files are past their Valid-Until by design.
    opts = "[check-valid-until=no]"
    return [
        f"deb {opts} http://snapshot.debian.org/archive/debian/{snapshot} bookworm main",
        f"deb {opts} http://snapshot.debian.org/archive/debian/{snapshot} bookworm-updates main",
        f"deb {opts} http://snapshot.debian.org/archive/debian-security/{snapshot} bookworm-security main",
    ]


# libnuma1: vLLM's CPU kernels link against it (the vLLM CPU model server); 60 KB.
PACKAGES = ["python3", "python3-venv", "python3-pip", "ca-certificates", "libnuma1"]
# Docs, man pages and translations are dead weight in a container; copyright files stay (licences).
DPKG_OPTS = [
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
]
# Fixed file times in the tar and in the image, so the same packages give the same image ID on any
# machine and after a wiped store; the images built on the base hash that ID.
SOURCE_DATE_EPOCH = "1700000000"


def input_hash() -> str:
    recipe = {
        "suite": SUITE,
        "mirrors": mirrors(),
        "packages": PACKAGES,
        "dpkg": DPKG_OPTS,
        "epoch": SOURCE_DATE_EPOCH,
        "reproducible": 1,  # image times fixed too (buildah bud --timestamp)
        "dockerfile": DOCKERFILE.read_text(),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _mmdebstrap(out_tar: str) -> None:
    cmd = [
        "mmdebstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        "--aptopt=APT::Install-Recommends false",
        *(f"--dpkgopt={opt}" for opt in DPKG_OPTS),
        SUITE,
        out_tar,
        *mirrors(),
    ]
    run(cmd, env={"SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH})


def ensure() -> tuple[str, str]:
    """Make sure the base is in buildah's store and the registry.

    Returns (its reference by hash tag, its image ID)."""
    h = input_hash()
    ref = f"{LOCAL}:{h}"
    pushed = f"{paths.registry_host()}/{paths.NAMESPACE}/{NAME}:{h}"
    t0 = time.monotonic()
    if buildah.local_id(ref):
        say(f"base {ref}: cached")
    elif remote.manifest(pushed) is not None:
        with step(f"pull base {pushed} (cached in the registry)"):
            buildah.pull_insecure(pushed)
            buildah.tag(pushed, ref, f"{LOCAL}:{STABLE_TAG}")
    else:
        _build(h, ref)
        say(f"base {ref}: built in {time.monotonic() - t0:.0f}s")
    if remote.manifest(pushed) is None:
        with step(f"push {pushed}"):
            buildah.push(ref, pushed)
    manifest = remote.manifest(pushed)
    image_id = buildah.local_id(ref)
    if manifest is None or not image_id:
        raise SystemExit(f"base image {ref} is missing from buildah's store or the registry after the build")
    refs.record(NAME, f"{pushed.rsplit(':', 1)[0]}@{manifest.digest}")
    return ref, image_id


def _build(h: str, ref: str) -> None:
    work = paths.cache_dir() / "base" / h
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        with step(f"mmdebstrap {SUITE} ({', '.join(PACKAGES)})"):
            _mmdebstrap(str(work / "rootfs.tar"))
        with step(f"buildah bud {ref}"):
            tags = [ref, f"{LOCAL}:{STABLE_TAG}"]
            buildah.bud(DOCKERFILE, work, tags, quiet=True, timestamp=SOURCE_DATE_EPOCH)
    finally:
        # The rootfs tar is in the image now; keeping 200 MB of it around buys nothing.
        shutil.rmtree(work, ignore_errors=True)
