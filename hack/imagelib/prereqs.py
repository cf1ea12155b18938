"""Install the Debian packages the image tooling needs when they are missing (fresh Debian 12, as root)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

from imagelib.progress import say, step

PACKAGES = [
    "buildah",
    "mmdebstrap",
    "skopeo",
    "docker-registry",
    # The tools image needs busybox linked statically; the plain `busybox` package's is dynamic.
    "busybox-static",
    # The pause binary is compiled on the host and linked statically (libc.a is in libc6-dev).
    "gcc",
    "libc6-dev",
]

# Debian's containers-common normally ships this; without it buildah refuses to pull or push anything.
POLICY = Path("/etc/containers/policy.json")


def missing() -> list[str]:
    """Packages dpkg does not report as installed ("ii")."""
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n", *PACKAGES],
        capture_output=True,
        text=True,
    )
    installed = {line.split()[0] for line in proc.stdout.splitlines() if line.split()[1:2] == ["ii"]}
    wanted = list(PACKAGES)
    if importlib.util.find_spec("pip") is None:
        # The wheels are downloaded with this interpreter's pip (Debian's python3 lacks it by default).
        wanted.append("python3-pip")
    return [pkg for pkg in wanted if pkg not in installed]


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
