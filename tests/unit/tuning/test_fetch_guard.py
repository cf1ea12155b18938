"""The fetcher's URL check, its connection guard, and file naming."""

from __future__ import annotations

import socket
from ipaddress import ip_network

import pytest

from kaitopy.tuning.egress import socket_factory
from kaitopy.tuning.fetch import FetchError, FetchOptions, RefusedAddress, _check_url, file_name


def test_literal_private_url_is_refused_without_resolving() -> None:
    with pytest.raises(RefusedAddress, match=r"points at 169\.254\.169\.254, a link-local"):
        _check_url("http://169.254.169.254/latest/meta-data/", FetchOptions())
    _check_url("http://127.0.0.1:8080/x", FetchOptions(allow_private=True))
    _check_url("http://127.0.0.1:8080/x", FetchOptions(allowed=(ip_network("127.0.0.1/32"),)))
    with pytest.raises(RefusedAddress, match="loopback"):
        _check_url("http://127.0.0.2:8080/x", FetchOptions(allowed=(ip_network("127.0.0.1/32"),)))


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "http:///nohost"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(FetchError):
        _check_url(url, FetchOptions())


@pytest.mark.parametrize(
    ("sockaddr", "family"),
    [
        (("169.254.169.254", 80), socket.AF_INET),
        (("168.63.129.16", 80), socket.AF_INET),
        (("127.0.0.1", 80), socket.AF_INET),
        (("::ffff:169.254.169.254", 80, 0, 0), socket.AF_INET6),
        (("64:ff9b::a9fe:a9fe", 80, 0, 0), socket.AF_INET6),
    ],
)
def test_socket_factory_refuses_before_a_socket_exists(
    sockaddr: tuple[str, int] | tuple[str, int, int, int], family: socket.AddressFamily
) -> None:
    make = socket_factory(())
    with pytest.raises(RefusedAddress, match="is refused"):
        make((family, socket.SOCK_STREAM, 6, "", sockaddr))


def test_socket_factory_allows_public_and_exempt_addresses() -> None:
    sock = socket_factory(())((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", 443)))
    sock.close()  # created, never connected
    exempt = socket_factory((ip_network("127.0.0.1/32"),))
    exempt((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80))).close()
    with pytest.raises(RefusedAddress):
        exempt((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", 80)))


def test_file_names() -> None:
    assert file_name("https://h/path/train.jsonl?sig=abc", None, 0) == "train.jsonl"
    assert file_name("https://h/dl", 'attachment; filename="chat data.csv"', 0) == "chat_data.csv"
    assert file_name("https://h/dl", "attachment; filename*=UTF-8''x%2Fy.json", 0) == "y.json"
    assert file_name("https://h/", None, 3) == "data-3"
    assert file_name("https://h/..%2F..%2Fetc%2Fpasswd", None, 0) == "passwd"
