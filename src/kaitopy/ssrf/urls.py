"""The URL-level check: scheme, and every reading of the host against the forbidden ranges."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from kaitopy.ssrf.addresses import IPNetwork, refusal
from kaitopy.ssrf.hosts import HostError, hosts, literal


def url_problem(url: str, allowed: Iterable[IPNetwork] = ()) -> str | None:
    """Why `url` may not be fetched from, phrased to follow the URL ("... has no host"), or None.
    A DNS name passes here; the downloader checks what it resolves to on each connection."""
    allowed = tuple(allowed)
    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if scheme not in ("http", "https"):
        return f"must be an http(s) URL, not {scheme or 'a schemeless'} one"
    try:
        for host in hosts(url):
            address = literal(host)
            why = None if address is None else refusal(address, allowed)
            if why is not None:
                shown = (
                    host
                    if address is None or address.version == 6 or host == str(address)
                    else f"{host} (read as {address})"
                )
                return f"points at {shown}, {why}"
    except HostError as exc:
        return str(exc)
    return None
