"""Is a user-given URL safe for a pod to download from?

Tuning input and adapter URLs are fetched from inside the cluster, so a URL pointing at loopback,
link-local (cloud metadata), private or cluster-internal addresses would let a Workspace reach
what its author cannot. The check is on the URL as written (read as the HTTP client reads it, see
kaitopy.ssrf); it does not resolve DNS (admission must be fast and deterministic), so the
downloader re-checks every address it connects to.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from kaitopy.ssrf.addresses import IPNetwork
from kaitopy.ssrf.urls import url_problem as _ssrf_problem

_METADATA_HOSTS = {"metadata", "metadata.google.internal", "metadata.azure.internal", "instance-data"}
_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".svc", ".cluster.local", ".localdomain")


def url_problem(url: str, allowed: Iterable[IPNetwork] = ()) -> str | None:
    """Why `url` may not be downloaded from, or None when it may. `allowed`: the admin's private
    networks (--url-allow-network) that URLs may name by address."""
    problem = _ssrf_problem(url.strip(), allowed)
    if problem is not None:
        return problem
    # Names that are internal by convention: refused early, though the downloader's address
    # check would refuse what they resolve to anyway.
    host = (urlsplit(url.strip()).hostname or "").rstrip(".").lower()
    if host == "localhost" or host in _METADATA_HOSTS or host.endswith(_INTERNAL_SUFFIXES):
        return f"points at {host}, which is internal to the cluster or node"
    return None
