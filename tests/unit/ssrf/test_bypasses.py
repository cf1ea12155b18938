"""The SSRF review's bypass encodings: each must be refused by the webhook's check and by the
downloader's, with a message that says why."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from kaitopy.ssrf.addresses import refusal
from kaitopy.ssrf.hosts import inet_aton
from kaitopy.tuning.fetch import FetchOptions, RefusedAddress, _check_url
from kaitopy.webhooks.urls import url_problem

FULL_WIDTH = str.maketrans("0123456789", "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19")

BYPASSES = [
    ("http://" + "169.254.169.254".translate(FULL_WIDTH) + "/", "not plain ASCII"),
    ("http://169.254.169.254/", "link-local"),
    ("http://2852039166/", "read as 169.254.169.254"),  # decimal
    ("http://2130706433/", "read as 127.0.0.1"),
    ("http://0251.0376.0251.0376/", "read as 169.254.169.254"),  # octal
    ("http://0177.1/", "read as 127.0.0.1"),
    ("http://0xa9.0xfe.0xa9.0xfe/", "read as 169.254.169.254"),  # hex
    ("http://0xa9fea9fe/", "read as 169.254.169.254"),
    ("http://127.1/", "read as 127.0.0.1"),  # short forms
    ("http://169.254.43518/", "read as 169.254.169.254"),
    ("http://10.1/", "private"),
    ("http://[::ffff:169.254.169.254]/", "IPv6 form of 169.254.169.254"),  # mapped
    ("http://[::ffff:a9fe:a9fe]/", "IPv6 form of 169.254.169.254"),
    ("http://[::169.254.169.254]/", "IPv6 form of 169.254.169.254"),  # compatible
    ("http://[64:ff9b::169.254.169.254]/", "IPv6 form of 169.254.169.254"),  # NAT64
    ("http://[2002:a9fe:a9fe::]/", "IPv6 form of 169.254.169.254"),  # 6to4
    ("http://[2001:0:4136:e378:8000:63bf:5601:5601]/", "IPv6 form of 169.254.169.254"),  # Teredo
    ("http://[::1]/", "loopback"),
    ("http://[fe80::1%25eth0]/", "zone index"),
    ("http://[fd00:ec2::254]/", "private"),  # AWS's IPv6 metadata address
    ("http://168.63.129.16/", "WireServer"),
    ("http://168.63.129.16:32526/", "WireServer"),
    ("http://169.254.169.254./", "link-local"),  # trailing dot
    ("http://evil.com@169.254.169.254/", "link-local"),  # userinfo
    ("http://user:pass@169.254.169.254:80/", "link-local"),
    ("http://169.254.169.254\\@evil.com/", "backslash"),
    ("http://%31%36%39.254.169.254/", "cannot contain"),
    ("http://b\u00fccher.example/", "not plain ASCII"),  # IDNA: write the punycode form
    ("http://100.64.0.1/", "CGNAT"),
    ("http://100.100.100.200/", "CGNAT"),  # Alibaba's metadata address
    ("http://0.0.0.0/", "unspecified"),
    ("http://0/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "reserved"),
    ("http://198.18.0.1/", "non-public"),
    ("http://1.2.3.256/", "not a valid IPv4"),
    ("http://08.1.1.1/", "not a valid IPv4"),  # octal with an 8: resolvers disagree
]


@pytest.mark.parametrize(("url", "why"), BYPASSES)
def test_webhook_refuses(url: str, why: str) -> None:
    problem = url_problem(url)
    assert problem is not None and why in problem, problem


@pytest.mark.parametrize(("url", "why"), BYPASSES)
def test_downloader_refuses(url: str, why: str) -> None:
    with pytest.raises(RefusedAddress, match="refusing to fetch") as info:
        _check_url(url, FetchOptions())
    assert why in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/data.jsonl",
        "https://xn--bcher-kva.example/d.csv",
        "http://8.8.8.8/x",
        "http://134744072/x",  # 8.8.8.8 in decimal: odd but public
        "http://[2606:4700:4700::1111]/x",
        "http://[::ffff:8.8.8.8]/x",
        "https://data.example.com./x",
        "https://s3.amazonaws.com/bucket/1.2.3/data.parquet",
    ],
)
def test_public_urls_pass(url: str) -> None:
    assert url_problem(url) is None
    _check_url(url, FetchOptions())


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.01", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0x", "0.0.0.0"),
        ("1.2.3.4", "1.2.3.4"),
    ],
)
def test_inet_aton_readings(host: str, address: str) -> None:
    assert str(inet_aton(host)) == address


@pytest.mark.parametrize("host", ["1.2.3.4.5", "256.1.1.1", "1.16777216", "09", "example", "1..2"])
def test_not_inet_aton(host: str) -> None:
    assert inet_aton(host) is None


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.9.9.9", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("fe80::1", "link-local"),
        ("fec0::1", "site-local"),
        ("::", "unspecified"),
        ("ff02::1", "multicast"),
        ("64:ff9b:1::1", "NAT64"),
        ("::ffff:0:a9fe:a9fe", "IPv6 form of 169.254.169.254"),  # IPv4-translated (SIIT)
        ("2001:db8::1", "non-public"),
    ],
)
def test_refused_addresses(address: str, why: str) -> None:
    reason = refusal(ip_address(address))
    assert reason is not None and why in reason


def test_exemptions_are_exact() -> None:
    from ipaddress import ip_network

    exempt = (ip_network("127.0.0.1/32"),)
    assert refusal(ip_address("127.0.0.1"), exempt) is None
    assert refusal(ip_address("127.0.0.2"), exempt) is not None
    assert refusal(ip_address("169.254.169.254"), exempt) is not None
