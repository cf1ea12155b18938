"""Thin wrappers over the buildah commands the builds use.

`--isolation chroot` because it needs neither an OCI runtime's cgroup setup (crun fails on this
machine's hybrid cgroup hierarchy) nor user namespaces; the build steps run as root in a chroot.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from imagelib import progress


def _out(*args: str) -> str:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, check=True).stdout


def local_id(ref: str) -> str | None:
    """The image ID (sha256 of its config) in buildah's store, or None when it is not there."""
    proc = subprocess.run(
        ["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", ref],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def local_size(ref: str) -> str:
    """Unpacked size as buildah reports it ("1.43 GB"); empty when the store lacks the image."""
    proc = subprocess.run(["buildah", "images", "--json", ref], capture_output=True, text=True)
    images = json.loads(proc.stdout or "[]") if proc.returncode == 0 else []
    return str(images[0]["size"]) if images else ""


def bud(
    dockerfile: Path,
    context: Path,
    tags: Sequence[str],
    build_args: Mapping[str, str] | None = None,
    quiet: bool = False,
    timestamp: str | None = None,
) -> None:
    """`timestamp` (epoch seconds) fixes the image's creation time and its files' times, so the same
    inputs give the same image ID."""
    # --layers: keep each step's layer in the store and reuse it when the step and its inputs are
    # unchanged, so a source edit does not reinstall torch (the Dockerfiles put dependencies first).
    cmd = ["buildah", "bud", "--isolation", "chroot", "--layers", "--format", "oci", "-f", str(dockerfile)]
    if timestamp is not None:
        cmd += ["--timestamp", timestamp]
    for tag in tags:
        cmd += ["-t", tag]
    for key, value in (build_args or {}).items():
        cmd += ["--build-arg", f"{key}={value}"]
    progress.run([*cmd, str(context)], quiet=quiet)


def tag(ref: str, *new: str) -> None:
    _out("tag", ref, *new)


def pull_insecure(ref: str) -> None:
    progress.run(["buildah", "pull", "--tls-verify=false", ref], quiet=True)


def push(local: str, dest: str) -> str:
    """Push over plain HTTP; returns the manifest digest the registry stored.

    Layers go gzip-compressed: containers/image (buildah 1.28) compresses every layer for a docker://
    destination and ignores --disable-compression there, so -D would only mislead. The gzip is
    parallel (pgzip); pushing the 1.4 GB model server to loopback takes ~20 s of it.
    """
    with tempfile.TemporaryDirectory() as tmp:
        digest_file = Path(tmp) / "digest"
        progress.run(
            [
                "buildah",
                "push",
                "--tls-verify=false",
                "--digestfile",
                str(digest_file),
                local,
                f"docker://{dest}",
            ],
            quiet=True,
        )
        return digest_file.read_text().strip()
