"""Read a URL's host the way the HTTP client and the system resolver will.

Two readings of one URL are the classic SSRF bypass: a check that parses full-width `127.0.0.1` or
`2130706433` as a DNS name passes it, while yarl folds the first to 127.0.0.1 and getaddrinfo
reads the second as an address (inet_aton semantics: decimal, octal, hex and short forms). So a
host must be plain ASCII, numeric hosts are read with inet_aton's rules, and the host yarl (hence
aiohttp) derives must agree with the one urllib sees.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv6Address
from urllib.parse import urlsplit

from yarl import URL

from kaitopy.ssrf.addresses import IPAddress

_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
# getaddrinfo tries inet_aton first, which accepts a host whose labels are all numbers.
_NUMBER = re.compile(r"0x[0-9a-f]*|[0-9]+")


class HostError(ValueError):
    """The host cannot be checked as written; the message says why and what to write instead."""


def _number(label: str) -> int:
    if label.startswith("0x"):
        return int(label[2:] or "0", 16)
    if len(label) > 1 and label.startswith("0"):
        return int(label, 8)
    return int(label, 10)


def inet_aton(host: str) -> IPv4Address | None:
    """The address inet_aton reads from `host` (1 to 4 numeric labels, the last filling the
    remaining bytes), or None when it is not a numeric host."""
    labels = host.split(".")
    if len(labels) > 4 or not all(_NUMBER.fullmatch(label) for label in labels):
        return None
    try:
        values = [_number(label) for label in labels]
    except ValueError:  # an 8 or 9 in an octal label: inet_aton rejects it, so may we
        return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        return None
    packed = 0
    for v in head:
        packed = packed << 8 | v
    return IPv4Address(packed << 8 * (5 - len(values)) | last)


def literal(host: str) -> IPAddress | None:
    """The address `host` names without DNS, or None for a DNS name. Raises HostError for hosts
    that are not plain ASCII or that no reading makes safe to check."""
    if not host.isascii():
        raise HostError(
            f"has a host that is not plain ASCII ({host!r}); write the host in ASCII "
            "(digits 0-9, and punycode 'xn--' labels for international names)"
        )
    host = host.lower()
    if ":" in host:
        if "%" in host:
            raise HostError(f"has an IPv6 zone index in its host ({host!r}); drop the '%...' part")
        try:
            return IPv6Address(host)
        except ValueError:
            raise HostError(f"has an invalid IPv6 host ({host!r})") from None
    if host.endswith("."):
        host = host[:-1]  # the root label: the resolver ignores one trailing dot
    if not _NAME.fullmatch(host):
        raise HostError(f"has characters a host name cannot contain ({host!r})")
    address = inet_aton(host)
    if address is None and _NUMBER.fullmatch(host.rsplit(".", 1)[-1]):
        # All-numeric last label but not a valid address: resolvers differ on such hosts.
        raise HostError(f"has a numeric host that is not a valid IPv4 address ({host!r})")
    return address


def hosts(url: str) -> list[str]:
    """The host as urllib and as yarl (aiohttp's URL parser) read it; both are checked, since the
    connection uses yarl's. Raises HostError when either cannot parse the URL or it has no host."""
    if any(c == "\\" or c.isspace() or ord(c) < 0x20 for c in url):
        raise HostError("has a backslash, space or control character; percent-encode it or remove it")
    try:
        first = urlsplit(url).hostname
        second = URL(url).raw_host
    except ValueError as exc:
        raise HostError(f"is not a valid URL ({exc})") from None
    if not first or not second:
        raise HostError("has no host")
    return [first, second]
