"""Model weights as an OCI artifact: one blob per file, named by its title annotation.

Unlike the adapter images (tuning/oci.py), nothing here is run by a container runtime: the pod's
init container pulls with `kaitopy weights pull`, so the artifact needs no tar layers and no
platform. One blob per file lets a pull stream each file straight to disk while hashing it
(memory stays at one chunk), check it against its digest before it takes its name, and refuse a
tampered blob without ever exposing its bytes under the real file name.

The manifest's digest is what a user pins (`--digest` or `@sha256:`); the pull checks the bytes
the registry returned against the pin before trusting the blob digests listed in them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from kaitopy.tuning.oci import (
    MANIFEST_TYPE,
    ImageRef,
    OciError,
    RegistrySession,
    parse_image,
    resolve_credentials,
)

log = logging.getLogger(__name__)

ARTIFACT_TYPE = "application/vnd.kaitopy.model.v1"
CONFIG_TYPE = "application/vnd.kaitopy.model.config.v1+json"
FILE_TYPE = "application/vnd.kaitopy.model.file.v1"
TITLE = "org.opencontainers.image.title"
MARKER = ".kaitopy-weights.json"
"""Written into the destination after every file checked out: the manifest digest it holds."""
CHUNK = 1 << 20
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_LOOPBACK = ("127.", "localhost", "[::1]", "::1")
TIMEOUT_S = (15.0, 120.0)
"""(connect, read) for every registry request: a stalled registry fails the pull (and the kubelet
retries the init container) instead of hanging the pod in Init forever."""


@dataclass(frozen=True)
class Pulled:
    digest: str
    """The manifest digest the destination now holds."""
    files: tuple[Path, ...]
    reused: bool
    """True when the destination already held this manifest's files and nothing was fetched."""


def is_loopback(registry: str) -> bool:
    return registry.startswith(_LOOPBACK)


def check_digest(value: str, what: str) -> str:
    if not _DIGEST.match(value):
        raise OciError(f"{what} {value!r} is not a sha256 digest (sha256: and 64 lowercase hex digits)")
    return value


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def model_files(src: Path) -> list[Path]:
    """The files to push, sorted: hidden names (build markers, partial files) stay behind."""
    if not src.is_dir():
        raise OciError(f"{src} is not a directory")
    out: list[Path] = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_symlink():
            raise OciError(f"{path} is a symbolic link; a weights artifact holds plain files only")
        if path.is_file():
            out.append(path)
    if not out:
        raise OciError(f"{src} holds no files to push")
    return out


def _json_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _digest_of(body: bytes) -> str:
    return f"sha256:{hashlib.sha256(body).hexdigest()}"


def push(src: Path, image: str, docker_config: Path | None = None, plain_http: bool = False) -> str:
    """Push every file under `src` as the artifact `image`; return the manifest digest."""
    ref = parse_image(image)
    files = model_files(src)
    layers: list[dict[str, Any]] = []
    for path in files:
        title = str(PurePosixPath(*path.relative_to(src).parts))
        layers.append(
            {
                "mediaType": FILE_TYPE,
                "digest": _sha256_of(path),
                "size": path.stat().st_size,
                "annotations": {TITLE: title},
            }
        )
    config = _json_bytes({"files": [layer["annotations"][TITLE] for layer in layers]})
    config_desc = {"mediaType": CONFIG_TYPE, "digest": _digest_of(config), "size": len(config)}
    session = _session(ref, docker_config, plain_http)
    for path, layer in zip(files, layers, strict=True):
        _upload(session, layer, path.open("rb"), str(path))
    _upload_bytes(session, config_desc, config)
    manifest = _json_bytes(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "artifactType": ARTIFACT_TYPE,
            "config": config_desc,
            "layers": layers,
        }
    )
    digest = _digest_of(manifest)
    url = f"{_base(session)}/manifests/{ref.reference}"
    resp = session.request(url, "PUT", data=manifest, headers={"Content-Type": MANIFEST_TYPE})
    session.check(resp, "uploading the manifest")
    total = sum(int(layer["size"]) for layer in layers)
    log.info("pushed %s@%s (%d files, %d bytes)", ref, digest, len(layers), total)
    return digest


def _session(ref: ImageRef, docker_config: Path | None, plain_http: bool) -> RegistrySession:
    session = RegistrySession(ref, resolve_credentials(docker_config, ref), plain_http)
    http = session.registry.session
    send = http.request

    def with_timeout(method: str, url: str, **kwargs: Any) -> Any:
        # oras passes no timeout of its own; requests would wait forever on a silent socket.
        kwargs.setdefault("timeout", TIMEOUT_S)
        return send(method, url, **kwargs)

    http.request = with_timeout
    return session


def _base(session: RegistrySession) -> str:
    return f"{session.prefix}://{session.ref.api_host}/v2/{session.ref.repository}"


def _exists(session: RegistrySession, desc: dict[str, Any]) -> bool:
    resp = session.request(f"{_base(session)}/blobs/{desc['digest']}", "HEAD")
    return bool(resp.status_code == 200)


def _upload(session: RegistrySession, desc: dict[str, Any], body: Any, what: str) -> None:
    """A monolithic upload (POST, then PUT with the digest) that streams `body` from its file:
    requests sends a file object in chunks, so a large weights file never sits in memory."""
    with body:
        if _exists(session, desc):
            log.info("%s: blob %s already in the registry", what, desc["digest"])
            return
        resp = session.request(f"{_base(session)}/blobs/uploads/", "POST")
        session.check(resp, f"starting the upload of {what}")
        location = resp.headers.get("Location", "")
        if not location:
            raise OciError(f"{session.ref}: the registry started an upload of {what} but gave no Location")
        if location.startswith("/"):
            location = f"{session.prefix}://{session.ref.api_host}{location}"
        sep = "&" if "?" in location else "?"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(desc["size"])}
        headers.update(_basic_header(session))
        resp = session.request(f"{location}{sep}digest={desc['digest']}", "PUT", data=body, headers=headers)
        session.check(resp, f"uploading {what}")


def _basic_header(session: RegistrySession) -> dict[str, str]:
    """Basic credentials sent up front: oras answers a 401 by sending the request again, and a
    streamed file body cannot be sent twice. (Token registries get their token on the POST.)"""
    auth = session.registry.auth
    if session.creds is None or getattr(auth, "_basic_auth", None) is None:
        return {}
    header: dict[str, str] = auth.get_auth_header()
    return header


def _upload_bytes(session: RegistrySession, desc: dict[str, Any], body: bytes) -> None:
    _upload(session, desc, io.BytesIO(body), "the artifact config")


# --- pull -------------------------------------------------------------------------------------


def read_marker(dest: Path) -> str | None:
    try:
        doc = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return None
    digest = doc.get("digest") if isinstance(doc, dict) else None
    return digest if isinstance(digest, str) else None


def _marker_files_present(dest: Path) -> tuple[Path, ...] | None:
    """The files the marker lists when every one is there at its recorded size, else None."""
    try:
        doc = json.loads((dest / MARKER).read_text())
        files = {str(k): int(v) for k, v in doc["sizes"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    out = []
    for title, size in sorted(files.items()):
        path = dest / title
        if not path.is_file() or path.stat().st_size != size:
            return None
        out.append(path)
    return tuple(out)


def _write_marker(dest: Path, ref: ImageRef, digest: str, layers: Iterable[dict[str, Any]]) -> None:
    doc = {
        "image": str(ref),
        "digest": digest,
        "sizes": {layer["annotations"][TITLE]: int(layer["size"]) for layer in layers},
    }
    tmp = dest / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(doc, sort_keys=True, indent=2))
    os.replace(tmp, dest / MARKER)


def _pin(ref: ImageRef, digest: str | None) -> str | None:
    in_ref = ref.reference if ref.reference.startswith("sha256:") else None
    if in_ref is not None:
        check_digest(in_ref, "the image's digest")
    if digest is not None:
        check_digest(digest, "--digest")
    if in_ref and digest and in_ref != digest:
        raise OciError(f"{ref} names digest {in_ref} but --digest pins {digest}")
    return digest or in_ref


def _title(layer: dict[str, Any]) -> PurePosixPath:
    title = (layer.get("annotations") or {}).get(TITLE)
    path = PurePosixPath(str(title or ""))
    if not title or path.is_absolute() or ".." in path.parts or any(p.startswith(".") for p in path.parts):
        raise OciError(f"blob {layer.get('digest')} has no safe file name (title {title!r})")
    return path


def pull(
    image: str,
    dest: Path,
    digest: str | None = None,
    docker_config: Path | None = None,
    plain_http: bool = False,
) -> Pulled:
    """Fetch the artifact's files into `dest`, each checked against its digest as it is written.
    With a pin (`digest`, or `@sha256:` in `image`) the manifest must hash to it; a destination
    whose marker already names that digest is left as it is without asking the registry."""
    ref = parse_image(image)
    pin = _pin(ref, digest)
    if pin is not None and read_marker(dest) == pin:
        present = _marker_files_present(dest)
        if present is not None:
            log.info("%s already holds %s@%s", dest, ref, pin)
            return Pulled(pin, present, reused=True)
    session = _session(ref, docker_config, plain_http)
    body, actual = _manifest(session, ref, pin)
    manifest = json.loads(body)
    config_type = (manifest.get("config") or {}).get("mediaType")
    if config_type != CONFIG_TYPE:
        raise OciError(
            f"{ref} is not a kaitopy weights artifact (config media type {config_type!r}, "
            f"expected {CONFIG_TYPE}); push it with `kaitopy weights push`"
        )
    layers = list(manifest.get("layers") or ())
    if not layers:
        raise OciError(f"{ref} lists no files")
    titles = [_title(layer) for layer in layers]
    if read_marker(dest) == actual:
        present = _marker_files_present(dest)
        if present is not None:
            log.info("%s already holds %s@%s", dest, ref, actual)
            return Pulled(actual, present, reused=True)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MARKER).unlink(missing_ok=True)  # stale until every file below checks out
    written = [
        _fetch_blob(session, ref, layer, dest / Path(*title.parts))
        for layer, title in zip(layers, titles, strict=True)
    ]
    _write_marker(dest, ref, actual, layers)
    log.info("pulled %s@%s: %d files into %s", ref, actual, len(written), dest)
    return Pulled(actual, tuple(written), reused=False)


def _manifest(session: RegistrySession, ref: ImageRef, pin: str | None) -> tuple[bytes, str]:
    """The manifest's bytes and their digest, refused when they do not hash to the pin."""
    # By tag when the image names one, so a pin that no longer matches the tag says so (by
    # digest, the registry would only answer 404).
    url = f"{_base(session)}/manifests/{ref.reference}"
    resp = session.request(url, "GET", headers={"Accept": MANIFEST_TYPE})
    if resp.status_code == 404:
        raise OciError(f"{ref}: manifest not found (HTTP 404)")
    session.check(resp, "reading the manifest")
    body: bytes = resp.content
    actual = _digest_of(body)
    if pin is not None and actual != pin:
        raise OciError(
            f"{ref}: the registry's manifest has digest {actual}, not the pinned {pin}; refusing it "
            "(the tag was pushed again, or the pin is wrong)"
        )
    announced = resp.headers.get("Docker-Content-Digest")
    if announced and announced != actual:
        raise OciError(f"{ref}: the manifest hashes to {actual} but the registry announced {announced}")
    return body, actual


def _fetch_blob(session: RegistrySession, ref: ImageRef, layer: dict[str, Any], target: Path) -> Path:
    want = check_digest(str(layer.get("digest")), "a blob digest")
    size = int(layer.get("size", -1))
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.part")
    resp = session.request(f"{_base(session)}/blobs/{want}", "GET", stream=True)
    session.check(resp, f"downloading {target.name} ({want})")
    h = hashlib.sha256()
    got = 0
    try:
        with resp, part.open("wb") as out:
            for chunk in resp.iter_content(CHUNK):
                got += len(chunk)
                if got > size >= 0:
                    raise OciError(f"{ref}: blob {want} ({target.name}) is longer than its {size} bytes")
                h.update(chunk)
                out.write(chunk)
        actual = f"sha256:{h.hexdigest()}"
        if actual != want or (size >= 0 and got != size):
            raise OciError(
                f"{ref}: blob for {target.name} does not match its digest: expected {want} "
                f"({size} bytes), got {actual} ({got} bytes); refusing it"
            )
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return target
