"""images.json: image name -> the reference last pushed for it, pinned by digest
(`10.229.254.1:5001/kaitopy/pause@sha256:...`), for other tooling to pick up."""

from __future__ import annotations

import json
import os
from pathlib import Path

from imagelib import paths


def load(path: Path | None = None) -> dict[str, str]:
    try:
        data: dict[str, str] = json.loads((path or paths.refs_file()).read_text())
    except FileNotFoundError:
        return {}
    return data


def record(name: str, ref: str, path: Path | None = None) -> None:
    """Update one entry; written to a temp file and renamed so a reader never sees half a file."""
    path = path or paths.refs_file()
    data = load(path)
    data[name] = ref
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(dict(sorted(data.items())), indent=2) + "\n")
    tmp.replace(path)
