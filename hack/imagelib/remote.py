"""What the loopback registry holds, over its HTTP API (plain HTTP, anonymous): enough to decide
whether a build is cached, to report sizes and to move a stable tag without pushing again."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    body: bytes

    @property
    def doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.body)
        return doc

    def size(self) -> int:
        """Bytes the image's layers take in the registry (gzip-compressed): what a node pulls."""
        return sum(int(layer["size"]) for layer in self.doc.get("layers", []))


def split(ref: str) -> tuple[str, str, str]:
    """10.229.254.1:5001/kaitopy/pause:abc -> (10.229.254.1:5001, kaitopy/pause, abc)."""
    host, _, rest = ref.partition("/")
    repo, _, tag = rest.rpartition(":")
    return host, repo, tag


def manifest(ref: str) -> Manifest | None:
    host, repo, tag = split(ref)
    req = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return Manifest(r.headers["Docker-Content-Digest"], r.headers["Content-Type"], r.read())
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def put_tag(ref: str, m: Manifest) -> None:
    """Point `ref`'s tag at an existing manifest (same bytes, so the same digest)."""
    host, repo, tag = split(ref)
    req = urllib.request.Request(
        f"http://{host}/v2/{repo}/manifests/{tag}",
        data=m.body,
        method="PUT",
        headers={"Content-Type": m.media_type},
    )
    with urllib.request.urlopen(req, timeout=30):
        pass
