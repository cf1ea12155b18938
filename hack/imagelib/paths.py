"""Where the image tooling keeps things. Functions, not constants: tests point them elsewhere via env."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
# Every pushed image lives under this namespace in the registry.
NAMESPACE = "kaitopy"


def cache_dir() -> Path:
    return Path(os.environ.get("KAITOPY_IMAGE_CACHE", "~/.cache/kaitopy/images")).expanduser()


def registry_port() -> int:
    return int(os.environ.get("KAITOPY_REGISTRY_PORT", "5001"))


# Run as root, the registry listens on an address of a link this tooling creates (a bridge with no
# ports), not on loopback: pods on the local provider's nodes pull from it too (the weights init
# container), and a pod's 127.0.0.1 is its own. docs/local-nodes.md has the whole layout.
REGISTRY_LINK = "kaitopy-reg"
REGISTRY_ADDRESS = "10.229.254.1"


def registry_address() -> str:
    explicit = os.environ.get("KAITOPY_REGISTRY_ADDRESS")
    if explicit:
        return explicit
    return REGISTRY_ADDRESS if os.geteuid() == 0 and shutil.which("ip") else "127.0.0.1"


def registry_host() -> str:
    return f"{registry_address()}:{registry_port()}"


def refs_file() -> Path:
    """name -> pushed reference with digest; read by image_refs() in hack/images.py."""
    return cache_dir() / "images.json"
