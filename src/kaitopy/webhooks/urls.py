"""Is a user-given URL safe for a pod to download from?

Tuning input and adapter URLs are fetched from inside the cluster, so a URL pointing at loopback,
link-local (cloud metadata), private or cluster-internal addresses would let a Workspace reach
what its author cannot. The check is on the URL as written; it does not resolve DNS (admission must
be fast and deterministic), so the downloader re-checks the address it connects to.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

_METADATA_HOSTS = {"metadata", "metadata.google.internal", "metadata.azure.internal", "instance-data"}
_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".svc", ".cluster.local", ".localdomain")
_NUMERIC_HOST = re.compile(r"^[0-9a-fx.]+$")


def url_problem(url: str) -> str | None:
    """Why `url` may not be downloaded from, or None when it may."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"must be an http(s) URL, not {parts.scheme or 'a schemeless'} one"
    if not host:
        return "has no host"
    host = host.rstrip(".").lower()
    if host == "localhost" or host in _METADATA_HOSTS or host.endswith(_INTERNAL_SUFFIXES):
        return f"points at {host}, which is internal to the cluster or node"
    address = _address(host)
    if address is None:
        return None
    if address.is_loopback:
        return f"points at the loopback address {address}"
    if address.is_link_local:
        return f"points at the link-local address {address} (cloud metadata lives there)"
    if address.is_private or address.is_unspecified or address.is_reserved or address.is_multicast:
        return f"points at the non-public address {address}"
    return None


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not _NUMERIC_HOST.match(host) or not any(c.isdigit() for c in host):
            return None
        # Legacy IPv4 spellings browsers and libc accept: 2130706433, 0x7f.1, 127.1.
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
