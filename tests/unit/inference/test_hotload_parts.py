"""The hot-load loop's pure parts: reading the delivered list, and the registries a pod must not reach."""

from __future__ import annotations

import pytest

from kaitopy.inference.adapterpull import PullRefused, check_registry
from kaitopy.inference.hotload import DesiredInvalid, Wanted, parse_desired


def test_an_empty_file_means_nothing_delivered_yet() -> None:
    assert parse_desired("") is None
    assert parse_desired('{"adapters": []}') == []


def test_the_list_reads_as_the_controller_writes_it() -> None:
    text = '{"adapters":[{"name":"a","image":"r.io/a:1","strength":"0.5","pullSecrets":["s"]}]}'
    assert parse_desired(text) == [Wanted("a", "r.io/a:1", 0.5, ("s",))]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{", "not JSON"),
        ('{"adapters": {}}', "expected"),
        ('{"adapters": [{"name": "../x", "image": "i"}]}', "not a usable adapter name"),
        ('{"adapters": [{"name": "a"}]}', "image must be"),
        ('{"adapters": [{"name": "a", "image": "i", "strength": "x"}]}', "not a number"),
        ('{"adapters": [{"name": "a", "image": "i", "pullSecrets": ["../etc"]}]}', "Secret names"),
    ],
)
def test_a_bad_list_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(DesiredInvalid, match=says):
        parse_desired(text)


@pytest.mark.parametrize(
    ("host", "says"),
    [
        ("127.0.0.1:5000", "loopback"),
        ("localhost:8000", "loopback"),
        ("169.254.169.254", "link-local"),
        ("[::1]:5000", "loopback"),
        ("168.63.129.16", "WireServer"),
    ],
)
async def test_registries_at_the_pods_own_or_the_nodes_addresses_are_refused(host: str, says: str) -> None:
    with pytest.raises(PullRefused, match=says):
        await check_registry(host, allow_loopback=False)


async def test_a_private_registry_is_allowed() -> None:
    await check_registry("10.229.254.1:5000", allow_loopback=False)  # in-cluster registries are private
