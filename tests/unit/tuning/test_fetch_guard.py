"""The fetcher's address guard and file naming."""

from __future__ import annotations

import pytest

from kaitopy.tuning.fetch import FetchError, RefusedAddress, _check_literal, file_name, refusal


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.9.9.9", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),  # AWS/Azure/GCP instance metadata
        ("fe80::1", "link-local"),
        ("100.100.100.200", "shared or reserved"),  # Alibaba metadata, in the CGNAT range
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "private"),  # reserved; Python counts it private
    ],
)
def test_refused_addresses(address: str, why: str) -> None:
    reason = refusal(address)
    assert reason is not None and why in reason


@pytest.mark.parametrize("address", ["8.8.8.8", "20.50.2.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(address) is None


def test_literal_private_url_is_refused_without_resolving() -> None:
    with pytest.raises(RefusedAddress, match=r"169\.254\.169\.254 is a link-local"):
        _check_literal("http://169.254.169.254/latest/meta-data/", allow_private=False)
    _check_literal("http://127.0.0.1:8080/x", allow_private=True)


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "http:///nohost"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(FetchError):
        _check_literal(url, allow_private=False)


def test_file_names() -> None:
    assert file_name("https://h/path/train.jsonl?sig=abc", None, 0) == "train.jsonl"
    assert file_name("https://h/dl", 'attachment; filename="chat data.csv"', 0) == "chat_data.csv"
    assert file_name("https://h/dl", "attachment; filename*=UTF-8''x%2Fy.json", 0) == "y.json"
    assert file_name("https://h/", None, 3) == "data-3"
    assert file_name("https://h/..%2F..%2Fetc%2Fpasswd", None, 0) == "passwd"
