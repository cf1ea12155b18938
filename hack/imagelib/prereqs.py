"""Install the Debian packages the image tooling needs when they are missing (fresh Debian 12, as root)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from imagelib.progress import say, step

# command or file that proves it -> the Debian package that provides it
NEEDS: dict[str, str] = {
    "buildah": "buildah",
    "mmdebstrap": "mmdebstrap",
    "skopeo": "skopeo",
    "/usr/bin/docker-registry": "docker-registry",
    # The tools image needs busybox linked statically; the plain `busybox` package's is dynamic.
    "/usr/share/doc/busybox-static": "busybox-static",
    "cc": "gcc",
    # libc.a: the pause binary is linked statically.
    "/usr/lib/x86_64-linux-gnu/libc.a": "libc6-dev",
}

# Debian's containers-common normally ships this; without it buildah refuses to pull or push anything.
POLICY = Path("/etc/containers/policy.json")


def _present(what: str) -> bool:
    return Path(what).exists() if what.startswith("/") else shutil.which(what) is not None


def missing() -> list[str]:
    return sorted({pkg for what, pkg in NEEDS.items() if not _present(what)})


def ensure() -> None:
    pkgs = missing()
    if pkgs:
        with step(f"apt-get install {' '.join(pkgs)}"):
            env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
            subprocess.run(["apt-get", "install", "-y", "-qq", *pkgs], check=True, env=env)
    if not POLICY.exists():
        say(f"writing a minimal {POLICY} (accept any image: only local and loopback images are used)")
        POLICY.parent.mkdir(parents=True, exist_ok=True)
        POLICY.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}) + "\n")
