"""Which IP addresses a user-given URL may not reach, and why."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# Named ranges first so the message says what the address is; `is_global` below catches the rest.
_DENIED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ip_network(net), why)
    for net, why in (
        ("0.0.0.0/8", "the unspecified ('this host') range"),
        ("127.0.0.0/8", "a loopback address"),
        (
            "169.254.0.0/16",
            "a link-local address (cloud metadata endpoints such as 169.254.169.254 live there)",
        ),
        ("168.63.129.16/32", "Azure's WireServer (the node's host agent)"),
        ("10.0.0.0/8", "a private address"),
        ("172.16.0.0/12", "a private address"),
        ("192.168.0.0/16", "a private address"),
        ("100.64.0.0/10", "a shared (CGNAT) address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved address"),
        ("::/128", "the unspecified address"),
        ("::1/128", "a loopback address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("fc00::/7", "a private (unique-local) address"),
        ("ff00::/8", "a multicast address"),
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
    )
)

# IPv6 forms that carry an IPv4 address a gateway or the kernel may deliver to: each is judged by
# the IPv4 address inside, so ::ffff:169.254.169.254 is as forbidden as 169.254.169.254.
_MAPPED = IPv6Network("::ffff:0:0/96")
_TRANSLATED = IPv6Network("::ffff:0:0:0/96")
_COMPATIBLE = IPv6Network("::/96")
_NAT64 = IPv6Network("64:ff9b::/96")


def embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, translated, compatible, NAT64, 6to4,
    Teredo), or None."""
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in net for net in (_MAPPED, _TRANSLATED, _NAT64)):
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _COMPATIBLE and int(ip) > 1:  # :: and ::1 are themselves, not IPv4 addresses
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(ip: IPAddress, allowed: Iterable[IPNetwork] = ()) -> str | None:
    """Why `ip` may not be reached, or None when it may. `allowed` lifts the rule for given
    networks (tests use it for their loopback server); it is empty in production."""
    allowed = tuple(allowed)
    if any(ip.version == net.version and ip in net for net in allowed):
        return None
    if isinstance(ip, IPv6Address):
        if ip.scope_id:
            return "an address with a zone index"
        inner = embedded_ipv4(ip)
        if inner is not None:
            why = refusal(inner, allowed)
            if why is not None:
                return f"an IPv6 form of {inner}, {why}"
    for net, why in _DENIED:
        if ip.version == net.version and ip in net:
            return why
    if not ip.is_global:
        return "a non-public (reserved or special-purpose) address"
    return None


# What no allowance may open, whoever grants it: the node's own metadata and host-agent endpoints
# (credentials live there) and this host's loopback and unspecified ranges.
_NEVER_ALLOWED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ip_network(net), why)
    for net, why in (
        ("0.0.0.0/8", "the unspecified range"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local, where cloud metadata endpoints live"),
        ("168.63.129.16/32", "Azure's WireServer"),
        ("::/128", "the unspecified address"),
        ("::1/128", "loopback"),
        ("fe80::/10", "link-local"),
    )
)


def allowed_network(text: str) -> IPNetwork:
    """An admin's allowance (a CIDR that user-given URLs may reach though it is private), checked:
    a valid network that opens none of the never-allowed ranges. ValueError says what is wrong."""
    try:
        net = ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a network in CIDR form such as 10.20.0.0/16 ({exc})") from None
    for never, why in _NEVER_ALLOWED:
        if net.version == never.version and net.overlaps(never):
            raise ValueError(f"{text!r} overlaps {never} ({why}), which stays closed to user-given URLs")
    return net
