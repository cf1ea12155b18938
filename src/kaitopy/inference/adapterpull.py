"""Pulling one adapter image into the running pod, for a hot-load.

The same OCI client `kaitopy tune pull` uses (tuning/oci.py) copies the image's /data files into a
fresh directory. It talks to the one registry the image reference names, with the credentials of the
pull secrets the Workspace lists for that adapter (mounted read-only into the pod, one directory per
secret). Before any connection the registry's host is resolved and refused when it is this pod's own
loopback, a link-local (cloud metadata) address or Azure's WireServer: the model server and the vLLM
child listen on loopback, and node credentials live at the others.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

from kaitopy.tuning.oci import OciError, credentials_for, parse_image, pull, read_docker_config

log = logging.getLogger(__name__)

# The files a kubernetes.io/dockerconfigjson (or the legacy dockercfg) Secret mounts.
SECRET_FILES = (".dockerconfigjson", ".dockercfg")


class PullRefused(OciError):
    """The image names a registry this pod must not talk to; retrying cannot help."""


class ImageMissing(OciError):
    """The registry does not have the image (yet): a tuning run may still be pushing it."""


@dataclass(frozen=True)
class PullSettings:
    secrets_dir: Path | None = None
    """Where the pull secrets are mounted, one directory per Secret name."""
    plain_http_registries: frozenset[str] = field(default_factory=frozenset)
    """Registries (host[:port]) that speak HTTP, not HTTPS (the operator's setting)."""
    allow_loopback: bool = False
    """Tests only: their registry runs on this machine's loopback."""


_NEVER = (
    ("127.0.0.0/8", "this pod's own loopback"),
    ("::1/128", "this pod's own loopback"),
    ("0.0.0.0/8", "the unspecified range"),
    ("::/128", "the unspecified address"),
    ("169.254.0.0/16", "a link-local address (cloud metadata endpoints live there)"),
    ("fe80::/10", "a link-local address"),
    ("168.63.129.16/32", "Azure's WireServer"),
)


def _refusal(address: str, allow_loopback: bool) -> str | None:
    from ipaddress import ip_network

    ip = ip_address(address.split("%", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    for net, why in _NEVER:
        network = ip_network(net)
        if ip.version != network.version or ip not in network:
            continue
        if allow_loopback and ip.is_loopback:
            return None
        return why
    return None


async def check_registry(host: str, allow_loopback: bool) -> None:
    """PullRefused when `host` (host[:port]) is or resolves to an address the pod must not reach.
    (Addresses are checked once, before the pull; the client connects by name again.)"""
    if host.startswith("[") and "]" in host:
        name = host[1 : host.index("]")]  # [v6]:port
    elif host.count(":") == 1:
        name = host.rsplit(":", 1)[0]
    else:
        name = host
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise OciError(f"cannot resolve the registry {host}: {exc}") from None
    for info in infos:
        address = str(info[4][0])
        why = _refusal(address, allow_loopback)
        if why is not None:
            raise PullRefused(
                f"registry {host} resolves to {address}, {why}: adapters are not pulled from there"
            )


def docker_config_for(registry: str, secrets: Iterable[str], secrets_dir: Path | None) -> Path | None:
    """The first of the adapter's pull secrets that holds credentials for `registry`, or None."""
    for secret in secrets:
        if secrets_dir is None:
            break
        for file in SECRET_FILES:
            path = secrets_dir / secret / file
            if path.is_file() and credentials_for(read_docker_config(path), registry, f"secret {secret}"):
                return path
    return None


def _missing(err: OciError) -> bool:
    text = str(err)
    return "manifest" in text and any(m in text for m in ("HTTP 404", "MANIFEST_UNKNOWN", "NAME_UNKNOWN"))


async def pull_adapter(image: str, dest: Path, secrets: Iterable[str], settings: PullSettings) -> None:
    """The image's /data files into `dest` (created). Raises ImageMissing when the registry does not
    have the image, PullRefused for a registry that may not be reached, OciError for the rest."""
    ref = parse_image(image)
    await check_registry(ref.api_host, settings.allow_loopback)
    config = docker_config_for(ref.registry, list(secrets), settings.secrets_dir)
    plain = ref.registry in settings.plain_http_registries
    try:
        await asyncio.to_thread(pull, image, dest, config, plain)
    except OciError as exc:
        if _missing(exc):
            raise ImageMissing(f"{image} is not in the registry (yet): {exc}") from None
        raise
