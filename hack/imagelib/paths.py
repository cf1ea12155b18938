"""Where the image tooling keeps things. Functions, not constants: tests point them elsewhere via env."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
# Every pushed image lives under this namespace in the registry.
NAMESPACE = "kaitopy"


def cache_dir() -> Path:
    return Path(os.environ.get("KAITOPY_IMAGE_CACHE", "~/.cache/kaitopy/images")).expanduser()


def registry_port() -> int:
    return int(os.environ.get("KAITOPY_REGISTRY_PORT", "5001"))


def registry_host() -> str:
    return f"127.0.0.1:{registry_port()}"


def refs_file() -> Path:
    """name -> pushed reference with digest; read by image_refs() in hack/images.py."""
    return cache_dir() / "images.json"
