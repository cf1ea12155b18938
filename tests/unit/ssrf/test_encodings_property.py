"""Property: no spelling of a forbidden address gets past the webhook's or the downloader's check.

Addresses are drawn from the forbidden ranges, then written the ways resolvers and URL parsers
accept: inet_aton's decimal/octal/hex parts and short forms, IPv6 forms embedding the IPv4 address,
full-width digits, a trailing dot, userinfo, ports and upper case.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaitopy.tuning.fetch import FetchError, FetchOptions, _check_url
from kaitopy.webhooks.urls import url_problem

FORBIDDEN = [
    IPv4Network(n)
    for n in (
        "127.0.0.0/8",
        "169.254.0.0/16",
        "168.63.129.16/32",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "0.0.0.0/8",
        "224.0.0.0/4",
    )
]
FULL_WIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + d) for d in range(10)))


@st.composite
def forbidden_ipv4(draw: st.DrawFn) -> IPv4Address:
    net = draw(st.sampled_from(FORBIDDEN))
    return IPv4Address(int(net.network_address) + draw(st.integers(0, net.num_addresses - 1)))


def _part(value: int, style: str) -> str:
    if style == "hex":
        return hex(value)
    if style == "HEX":
        return "0X" + format(value, "X")
    if style == "octal":
        return "0" + format(value, "o")
    return str(value)


@st.composite
def ipv4_spelling(draw: st.DrawFn, ip: IPv4Address) -> str:
    """inet_aton's forms: 1 to 4 parts, the last filling the remaining bytes, each in any base."""
    n = draw(st.integers(1, 4))
    packed = ip.packed
    values = [*packed[: n - 1], int.from_bytes(packed[n - 1 :], "big")]
    styles = st.sampled_from(["dec", "hex", "HEX", "octal"])
    return ".".join(_part(v, draw(styles)) for v in values)


@st.composite
def ipv6_spelling(draw: st.DrawFn, ip: IPv4Address) -> str:
    v4 = int(ip)
    form = draw(st.sampled_from(["mapped", "mapped-dotted", "compat", "nat64", "6to4", "teredo", "siit"]))
    if form == "mapped-dotted":
        text = f"::ffff:{ip}"
    elif form == "teredo":
        text = str(IPv6Address((0x20010000 << 96) | (v4 ^ 0xFFFFFFFF)))
    else:
        prefix = {
            "mapped": 0xFFFF << 32,
            "compat": 0,
            "nat64": 0x64FF9B << 96,
            "siit": 0xFFFF << 48,
            "6to4": (0x2002 << 112) | (v4 << 80),
        }[form]
        text = str(IPv6Address(prefix | (0 if form == "6to4" else v4)))
        if form == "compat" and v4 <= 1:
            text = "::ffff:" + str(ip)  # ::0 and ::1 are themselves, not IPv4-compatible forms
    return f"[{draw(st.sampled_from([text, text.upper()]))}]"


@st.composite
def forbidden_url(draw: st.DrawFn) -> str:
    ip = draw(forbidden_ipv4())
    host = draw(st.one_of(ipv4_spelling(ip), ipv6_spelling(ip)))
    if draw(st.booleans()) and not host.startswith("["):
        host += "."
    if draw(st.integers(0, 5)) == 0:
        host = host.translate(FULL_WIDTH)
    userinfo = draw(st.sampled_from(["", "evil.example@", "u:p@", "example.com:80@"]))
    port = draw(st.sampled_from(["", ":80", ":443", ":8080"]))
    scheme = draw(st.sampled_from(["http", "https", "HTTP"]))
    return f"{scheme}://{userinfo}{host}{port}/latest/meta-data"


@settings(max_examples=400, deadline=None)
@given(forbidden_url())
def test_no_spelling_of_a_forbidden_address_is_admitted(url: str) -> None:
    assert url_problem(url) is not None, url
    with pytest.raises(FetchError):  # RefusedAddress, or not a URL at all
        _check_url(url, FetchOptions())
