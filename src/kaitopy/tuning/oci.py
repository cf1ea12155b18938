"""The adapter as an OCI image: one gzip layer whose files sit under /data.

The inference pods copy `/data/.` out of the image with a static busybox, so the image needs no
shell, but it must be an image a container runtime accepts (an image config with the layer's
diff_id, a tar+gzip layer), not a bare ORAS artifact. The layer is built reproducibly (sorted
entries, fixed owners and times): the same adapter files always give the same digest.
Registry traffic goes through oras-py; credentials come from a docker config json.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import io
import json
import logging
import platform
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from kaitopy.tuning.capped import CHUNK, CappedReader, TooLarge

log = logging.getLogger(__name__)

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST_TYPE = "application/vnd.docker.distribution.manifest.list.v2+json"
_GZIP_LAYERS = {LAYER_TYPE, "application/vnd.docker.image.rootfs.diff.tar.gzip"}
_TAR_LAYERS = {"application/vnd.oci.image.layer.v1.tar"}

DATA_ROOT = "data"
# Training bookkeeping that stays with the results volume and never goes into the image.
EXCLUDED = ("checkpoints",)
_EPOCH = 0  # reproducible layers: every entry has the same time

# What an adapter image's layers may expand to, all together: a LoRA adapter is MiBs to a few GiB.
DEFAULT_MAX_PULL_BYTES = 20 * 1024**3

_DOCKER_HUB = {"docker.io", "index.docker.io", "registry-1.docker.io"}


class OciError(RuntimeError):
    """A push or pull failed; the message says which image and why."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


def _host_key(key: str) -> str:
    """A docker config `auths` key as a bare host[:port] (keys may carry a scheme and a path)."""
    host = key.split("://", 1)[-1].split("/", 1)[0].lower()
    return "docker.io" if host in _DOCKER_HUB else host


def credentials_for(
    docker_config: dict[str, Any], registry: str, source: str = "docker config"
) -> Credentials | None:
    """The credentials `docker_config` holds for `registry`, from `auth` (base64 user:password)
    or `username`/`password`; None when it has none for that registry."""
    auths = docker_config.get("auths")
    if auths is None:
        # The legacy .dockercfg layout: the registry entries at the top level.
        legacy = {
            k: v for k, v in docker_config.items() if isinstance(v, dict) and ("auth" in v or "username" in v)
        }
        if not legacy:
            return None
        auths = legacy
    if not isinstance(auths, dict):
        raise OciError(f"{source}: 'auths' must be a mapping of registry to credentials")
    wanted = _host_key(registry)
    for key, entry in auths.items():
        if _host_key(str(key)) != wanted:
            continue
        if not isinstance(entry, dict):
            raise OciError(f"{source}: auths[{key!r}] must be a mapping")
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(str(entry["auth"]), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise OciError(f"{source}: auths[{key!r}].auth is not base64 of user:password") from None
            user, sep, password = decoded.partition(":")
            if not sep or not user:
                raise OciError(f"{source}: auths[{key!r}].auth does not decode to user:password")
            return Credentials(user, password)
        if entry.get("username") and entry.get("password") is not None:
            return Credentials(str(entry["username"]), str(entry["password"]))
        raise OciError(f"{source}: auths[{key!r}] has neither auth nor username/password")
    return None


def read_docker_config(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise OciError(f"cannot read the docker config {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise OciError(f"{path}: not valid JSON: {exc.msg}") from None
    if not isinstance(doc, dict):
        raise OciError(f"{path}: a docker config must be a JSON object with 'auths'")
    return doc


@dataclass(frozen=True)
class ImageRef:
    registry: str  # host[:port] as written
    repository: str
    reference: str  # tag or digest

    @property
    def api_host(self) -> str:
        return "registry-1.docker.io" if self.registry in _DOCKER_HUB else self.registry

    def __str__(self) -> str:
        sep = "@" if self.reference.startswith("sha256:") else ":"
        return f"{self.registry}/{self.repository}{sep}{self.reference}"


def parse_image(image: str) -> ImageRef:
    import oras.container

    try:
        c = oras.container.Container(image)
    except ValueError as exc:
        raise OciError(f"{image!r} is not an image reference: {exc}") from None
    reference = c.digest or c.tag or "latest"
    repository = f"{c.namespace}/{c.repository}" if c.namespace else c.repository
    if c.registry in _DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    return ImageRef(c.registry, repository, reference)


# --- layer building ---------------------------------------------------------------------------


def _files(src: Path) -> list[Path]:
    out: list[Path] = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if rel.parts[0] in EXCLUDED or any(p.startswith(".") for p in rel.parts):
            continue
        if path.is_symlink():
            raise OciError(f"{path} is a symbolic link; an adapter image holds plain files only")
        out.append(path)
    return out


def _entry(name: str, kind: bytes, size: int = 0, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = mode
    info.mtime = _EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def build_layer(src: Path, work: Path) -> tuple[Path, str, str, int]:
    """The gzip layer of `src`'s files under data/: (path, diff_id, digest, size)."""
    files = _files(src)
    if not any(p.is_file() for p in files):
        raise OciError(f"{src} holds no files to push")
    tar_path = work / "layer.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_entry(f"{DATA_ROOT}/", tarfile.DIRTYPE, mode=0o755))
        for path in files:
            name = str(PurePosixPath(DATA_ROOT, *path.relative_to(src).parts))
            if path.is_dir():
                tar.addfile(_entry(f"{name}/", tarfile.DIRTYPE, mode=0o755))
            else:
                with path.open("rb") as fh:
                    tar.addfile(_entry(name, tarfile.REGTYPE, path.stat().st_size), fh)
    diff_id = _sha256_file(tar_path)
    gz_path = work / "layer.tar.gz"
    # mtime=0 and no file name in the gzip header, so the compressed digest is reproducible too.
    with (
        tar_path.open("rb") as raw,
        gz_path.open("wb") as out,
        gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz,
    ):
        shutil.copyfileobj(raw, gz, 1 << 20)
    tar_path.unlink()
    return gz_path, diff_id, _sha256_file(gz_path), gz_path.stat().st_size


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def image_config(diff_id: str, architecture: str) -> bytes:
    config = {
        "architecture": architecture,
        "os": "linux",
        "config": {"Labels": {"io.kaitopy.content": "lora-adapter"}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "kaitopy tune push"}],
    }
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


# --- registry access --------------------------------------------------------------------------


class RegistrySession:
    """An oras Registry bound to one image's registry, with the auth backend its challenge asks
    for (Basic for htpasswd registries, bearer tokens for the rest)."""

    def __init__(self, ref: ImageRef, creds: Credentials | None, plain_http: bool) -> None:
        import oras.provider

        self.ref = ref
        self.creds = creds
        prefix = "http" if plain_http else "https"
        probe = oras.provider.Registry(hostname=ref.api_host, insecure=plain_http, auth_backend="basic")
        try:
            resp = probe.session.get(f"{prefix}://{ref.api_host}/v2/", timeout=30)
        except Exception as exc:
            raise OciError(f"cannot reach the registry {ref.registry}: {exc}") from None
        challenge = resp.headers.get("Www-Authenticate", "")
        backend = "basic" if challenge.lower().startswith("basic") else "token"
        self.registry = oras.provider.Registry(
            hostname=ref.api_host, insecure=plain_http, auth_backend=backend
        )
        # Only the given docker config counts: the pod's own ~/.docker must not leak in.
        self.registry.auth._auth_config = {"auths": {}}
        if creds is not None:
            self.registry.auth.set_basic_auth(creds.username, creds.password)
        sep = "@" if ref.reference.startswith("sha256:") else ":"
        self.container = self.registry.get_container(f"{ref.api_host}/{ref.repository}{sep}{ref.reference}")
        self.prefix = prefix
        if resp.status_code in (401, 403):
            if creds is not None:
                self._check_access()
            elif backend == "basic":
                # Anonymous and refused: say so now (oras would retry for minutes on a Basic challenge).
                raise self.denied(resp.status_code)
            # Bearer registries may still hand out anonymous pull tokens per repository.

    def _check_access(self) -> None:
        resp = self.request(f"{self.prefix}://{self.ref.api_host}/v2/", "GET")
        if resp.status_code in (401, 403):
            raise self.denied(resp.status_code)

    def denied(self, status: int) -> OciError:
        if self.creds is None:
            return OciError(
                f"registry {self.ref.registry} requires credentials (HTTP {status}) and the docker "
                f"config has none for it"
            )
        return OciError(
            f"registry {self.ref.registry} rejected the credentials of user {self.creds.username!r} "
            f"(HTTP {status}): check the push secret's username and password"
        )

    def request(self, url: str, method: str, **kwargs: Any) -> Any:
        try:
            return self.registry.do_request(url, method, **kwargs)
        except ValueError as exc:
            if "authentication" in str(exc):
                raise self.denied(401) from None
            raise OciError(f"{method} {url} failed: {exc}") from None

    def check(self, resp: Any, what: str) -> None:
        if resp.status_code in (200, 201, 202):
            return
        if resp.status_code in (401, 403):
            raise self.denied(resp.status_code)
        detail = ""
        try:
            errors = resp.json().get("errors") or []
            detail = "; ".join(str(e.get("message", e)) for e in errors)
        except Exception:
            detail = (resp.text or "")[:200]
        raise OciError(f"{what} for {self.ref}: HTTP {resp.status_code} {detail}".rstrip())


def resolve_credentials(docker_config: Path | None, ref: ImageRef) -> Credentials | None:
    if docker_config is None:
        return None
    creds = credentials_for(read_docker_config(docker_config), ref.registry, str(docker_config))
    if creds is None:
        log.warning("%s has no credentials for %s; trying anonymously", docker_config, ref.registry)
    return creds


def adapter_root(results: Path) -> Path:
    """The directory holding the adapter: the results directory itself, or the one subdirectory
    TrainingArguments.output_dir put it in (the image must have the adapter files at /data)."""
    if (results / "adapter_config.json").is_file():
        return results
    found = sorted(
        p.parent
        for p in results.rglob("adapter_config.json")
        if EXCLUDED[0] not in p.relative_to(results).parts
    )
    if len(found) == 1:
        log.info("the adapter is in %s; pushing that directory", found[0])
        return found[0]
    if found:
        listed = ", ".join(str(p) for p in found)
        raise OciError(f"{results} holds several adapters ({listed}); push one directory with --dir")
    raise OciError(f"{results} has no adapter_config.json: the training did not produce an adapter")


DEFAULT_ARCHITECTURES = ("amd64", "arm64")


def _json_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _descriptor(media_type: str, body: bytes) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": f"sha256:{hashlib.sha256(body).hexdigest()}",
        "size": len(body),
    }


def push(
    src: Path,
    image: str,
    docker_config: Path | None = None,
    plain_http: bool = False,
    architectures: tuple[str, ...] = DEFAULT_ARCHITECTURES,
    *,
    adapter: bool = True,
) -> str:
    """Push the files under `src` as `image`; return the image's digest. `adapter`: `src` must
    hold a trained adapter (else: any files, such as training data for tuning.input.image).

    The files are the same on every CPU, but a container runtime only pulls an image whose config
    names its own platform, so the image is an index of one manifest per architecture, all
    sharing the one layer."""
    if not architectures:
        raise OciError("no architectures to push for")
    if adapter:
        src = adapter_root(src)
    elif not src.is_dir() or not any(p.is_file() for p in src.rglob("*")):
        raise OciError(f"{src} holds no files to push")
    ref = parse_image(image)
    creds = resolve_credentials(docker_config, ref)
    with tempfile.TemporaryDirectory(prefix="kaitopy-push-") as tmp:
        work = Path(tmp)
        layer_path, diff_id, layer_digest, layer_size = build_layer(src, work)
        layer_desc = {"mediaType": LAYER_TYPE, "digest": layer_digest, "size": layer_size}
        session = RegistrySession(ref, creds, plain_http)
        _upload_blob(session, layer_path, layer_desc, "layer")
        entries: list[dict[str, Any]] = []
        for arch in architectures:
            config_bytes = image_config(diff_id, arch)
            config_path = work / f"config-{arch}.json"
            config_path.write_bytes(config_bytes)
            config_desc = _descriptor(CONFIG_TYPE, config_bytes)
            _upload_blob(session, config_path, config_desc, f"{arch} config")
            manifest = {
                "schemaVersion": 2,
                "mediaType": MANIFEST_TYPE,
                "config": config_desc,
                "layers": [layer_desc],
                "annotations": {"org.opencontainers.image.title": "LoRA adapter"},
            }
            body = _json_bytes(manifest)
            desc = _descriptor(MANIFEST_TYPE, body)
            _put_manifest(session, desc["digest"], body, MANIFEST_TYPE, f"the {arch} manifest")
            entries.append({**desc, "platform": {"os": "linux", "architecture": arch}})
        if len(entries) == 1:
            digest = entries[0]["digest"]
            _put_manifest(session, ref.reference, body, MANIFEST_TYPE, "the manifest")
        else:
            index = _json_bytes({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": entries})
            digest = _descriptor(INDEX_TYPE, index)["digest"]
            _put_manifest(session, ref.reference, index, INDEX_TYPE, "the image index")
    log.info(
        "pushed %s@%s (%s; layer %s, %d bytes)",
        ref,
        digest,
        ", ".join(architectures),
        layer_digest,
        layer_size,
    )
    return str(digest)


def _upload_blob(session: RegistrySession, path: Path, desc: dict[str, Any], what: str) -> None:
    try:
        resp = session.registry.upload_blob(str(path), session.container, desc)
    except ValueError as exc:
        raise OciError(f"uploading the {what} of {session.ref} failed: {exc}") from None
    session.check(resp, f"uploading the {what}")


def _put_manifest(session: RegistrySession, reference: str, body: bytes, media_type: str, what: str) -> None:
    url = f"{session.prefix}://{session.ref.api_host}/v2/{session.ref.repository}/manifests/{reference}"
    resp = session.request(url, "PUT", data=body, headers={"Content-Type": media_type})
    session.check(resp, f"uploading {what}")


def host_architecture() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _pick_platform(index: dict[str, Any], architecture: str) -> str:
    manifests = index.get("manifests") or []
    for m in manifests:
        platform = m.get("platform") or {}
        if platform.get("os", "linux") == "linux" and platform.get("architecture") == architecture:
            return str(m["digest"])
    if not manifests:
        raise OciError("the image index lists no manifests")
    return str(manifests[0]["digest"])


def _get_json(session: RegistrySession, url: str, accept: list[str], what: str) -> dict[str, Any]:
    resp = session.request(url, "GET", headers={"Accept": ", ".join(accept)})
    if resp.status_code == 404:
        raise OciError(f"{session.ref}: {what} not found (HTTP 404)")
    session.check(resp, f"reading the {what}")
    doc = resp.json()
    if not isinstance(doc, dict):
        raise OciError(f"{session.ref}: the {what} is not a JSON object")
    return doc


def pull(
    image: str,
    dest: Path,
    docker_config: Path | None = None,
    plain_http: bool = False,
    max_bytes: int = DEFAULT_MAX_PULL_BYTES,
) -> list[Path]:
    """Copy the image's /data files into `dest`, as the inference pod's init container does
    (`cp -r /data/. dest/`); return the files written. The layers may expand to `max_bytes`
    together: past that the pull fails (a gzip bomb stops there, in bounded memory)."""
    ref = parse_image(image)
    session = RegistrySession(ref, resolve_credentials(docker_config, ref), plain_http)
    accept = [MANIFEST_TYPE, DOCKER_MANIFEST_TYPE, INDEX_TYPE, DOCKER_LIST_TYPE]
    base = f"{session.prefix}://{ref.api_host}/v2/{ref.repository}"
    manifest = _get_json(session, f"{base}/manifests/{ref.reference}", accept, "manifest")
    if manifest.get("mediaType") in (INDEX_TYPE, DOCKER_LIST_TYPE) or "manifests" in manifest:
        digest = _pick_platform(manifest, host_architecture())
        manifest = _get_json(session, f"{base}/manifests/{digest}", accept, "platform manifest")
    config = _get_json(session, f"{base}/blobs/{manifest['config']['digest']}", ["*/*"], "image config")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    budget = max_bytes
    with tempfile.TemporaryDirectory(prefix="kaitopy-pull-") as tmp:
        for i, layer in enumerate(manifest.get("layers") or []):
            blob = Path(tmp) / f"layer-{i}"
            resp = session.request(f"{base}/blobs/{layer['digest']}", "GET", stream=True)
            session.check(resp, f"downloading layer {layer['digest']}")
            with blob.open("wb") as out:
                for chunk in resp.iter_content(1 << 20):
                    out.write(chunk)
            if _sha256_file(blob) != layer["digest"]:
                raise OciError(f"{ref}: layer {layer['digest']} does not match its digest")
            diff_id = diff_ids[i] if i < len(diff_ids) else None
            try:
                files, size = extract_layer(blob, layer.get("mediaType", ""), dest, diff_id, budget)
            except TooLarge as exc:
                raise OciError(
                    f"{ref}: {exc} (all layers together may expand to {max_bytes} bytes); "
                    "an adapter image this large is refused"
                ) from None
            except ValueError as exc:
                raise OciError(f"{ref}: {exc}") from None
            written += files
            budget -= size
    if not written:
        raise OciError(f"{ref} has no files under /{DATA_ROOT}")
    log.info("pulled %s: %d files into %s", ref, len(written), dest)
    return written


def _layer_stream(blob: Path, media_type: str, cap: int) -> tuple[BinaryIO, CappedReader]:
    with blob.open("rb") as fh:
        magic = fh.read(2)
    gzipped = media_type in _GZIP_LAYERS or (media_type not in _TAR_LAYERS and magic == b"\x1f\x8b")
    capped = CappedReader(blob.open("rb"), cap, gzipped, f"layer {blob.name}")
    return io.BufferedReader(capped, CHUNK), capped


def extract_layer(
    blob: Path, media_type: str, dest: Path, diff_id: str | None, cap: int
) -> tuple[list[Path], int]:
    """Write the layer's /data files under `dest`, decompressing as a stream that may expand to
    `cap` bytes (TooLarge past it); returns the files and the layer's uncompressed size.

    With a diff_id, a first pass checks the uncompressed content against it before anything is
    written (twice the CPU, no more memory): the files land only from a layer that matches."""
    if diff_id is not None:
        stream, capped = _layer_stream(blob, media_type, cap)
        with stream:
            while stream.read(CHUNK):
                pass
        if capped.digest() != diff_id:
            raise OciError(f"layer {blob.name}: its content does not match the config's diff_id {diff_id}")
    stream, capped = _layer_stream(blob, media_type, cap)
    written: list[Path] = []
    root = dest.resolve()
    # "r|": tarfile reads the stream front to back and never seeks, so nothing is buffered whole.
    with stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            parts = PurePosixPath(member.name.lstrip("/")).parts
            if parts and parts[0] == ".":
                parts = parts[1:]
            if len(parts) < 2 or parts[0] != DATA_ROOT:
                continue  # the copy only takes /data
            rel = parts[1:]
            if ".." in rel:
                raise OciError(f"layer entry {member.name!r} escapes /{DATA_ROOT}")
            target = root.joinpath(*rel)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                fh = tar.extractfile(member)
                assert fh is not None  # a regular file always has content
                with target.open("wb") as out:
                    shutil.copyfileobj(fh, out)
                written.append(target)
            else:
                log.warning("skipping layer entry %s: not a file or directory", member.name)
        # The end-of-archive blocks (and any padding after them) count towards the cap too.
        while stream.read(CHUNK):
            pass
    return written, capped.count
