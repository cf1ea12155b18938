"""The downloader's address guard against real loopback servers.

127.0.0.1 is exempted for the test (FetchOptions.allowed); 127.0.0.2, still forbidden as loopback,
stands in for the metadata address, with a server of its own that counts requests, so a refusal is
proved by that server never being reached. No packet leaves loopback, even if the guard regressed.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from ipaddress import ip_network
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from kaitopy.tuning.egress import guarded_connector
from kaitopy.tuning.fetch import FetchOptions, RefusedAddress, fetch_all

BODY = b'{"prompt": "say red", "completion": "red"}\n'
EXEMPT = (ip_network("127.0.0.1/32"),)


async def _serve(app: web.Application, host: str) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


@pytest.fixture
async def servers() -> AsyncIterator[tuple[int, int, dict[str, int]]]:
    """(allowed server's port, forbidden stand-in's port, forbidden stand-in's request count)."""
    hits = {"forbidden": 0}

    async def secret(request: web.Request) -> web.Response:
        hits["forbidden"] += 1
        return web.Response(body=BODY)

    forbidden_app = web.Application()
    forbidden_app.router.add_get("/{tail:.*}", secret)
    forbidden, forbidden_port = await _serve(forbidden_app, "127.0.0.2")

    async def data(request: web.Request) -> web.Response:
        return web.Response(body=BODY)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"].replace("PORT", str(forbidden_port)))

    app = web.Application()
    app.router.add_get("/data.jsonl", data)
    app.router.add_get("/redirect", redirect)
    allowed, port = await _serve(app, "127.0.0.1")
    try:
        yield port, forbidden_port, hits
    finally:
        await allowed.cleanup()
        await forbidden.cleanup()


class MapResolver(AbstractResolver):
    """Answers names from a table, as a DNS server under the URL author's control would."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = self.table[host]
        return [
            ResolveResult(hostname=host, host=address, port=port, family=socket.AF_INET, proto=0, flags=0)
        ]

    async def close(self) -> None:
        return None


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.2:PORT/latest/meta-data",
        "http://2130706434:PORT/latest/meta-data",  # 127.0.0.2 in decimal
        "http://127.2:PORT/latest/meta-data",
        "http://[::ffff:127.0.0.2]:PORT/latest/meta-data",
    ],
)
async def test_redirect_to_a_forbidden_address_is_refused_before_connecting(
    servers: tuple[int, int, dict[str, int]], tmp_path: Path, target: str
) -> None:
    port, _, hits = servers
    url = f"http://127.0.0.1:{port}/redirect?to={target}"
    with pytest.raises(RefusedAddress, match=r"redirects to .* a loopback address"):
        await fetch_all([url], tmp_path, FetchOptions(allowed=EXEMPT, attempts=1))
    assert hits["forbidden"] == 0


async def test_redirect_to_an_allowed_address_is_followed(
    servers: tuple[int, int, dict[str, int]], tmp_path: Path
) -> None:
    port, _, _ = servers
    url = f"http://127.0.0.1:{port}/redirect?to=http://127.0.0.1:{port}/data.jsonl"
    (path,) = await fetch_all([url], tmp_path, FetchOptions(allowed=EXEMPT, attempts=1))
    assert path.read_bytes() == BODY


async def test_name_resolving_to_a_forbidden_address_is_refused_at_connect(
    servers: tuple[int, int, dict[str, int]], tmp_path: Path
) -> None:
    port, forbidden_port, hits = servers
    resolver = MapResolver({"data.example": "127.0.0.2", "ok.example": "127.0.0.1"})
    options = FetchOptions(allowed=EXEMPT, attempts=1, resolver=resolver)
    (path,) = await fetch_all([f"http://ok.example:{port}/data.jsonl"], tmp_path, options)
    assert path.read_bytes() == BODY
    with pytest.raises(RefusedAddress, match=r"data\.example resolves to 127\.0\.0\.2, a loopback"):
        await fetch_all([f"http://data.example:{forbidden_port}/x"], tmp_path / "b", options)
    # A redirect to a name is checked the same way, on the connection it opens.
    with pytest.raises(RefusedAddress, match=r"data\.example resolves to 127\.0\.0\.2"):
        await fetch_all(
            [f"http://127.0.0.1:{port}/redirect?to=http://data.example:PORT/x"], tmp_path / "c", options
        )
    assert hits["forbidden"] == 0


async def test_the_connector_refuses_an_ip_literal_the_resolver_never_sees(
    servers: tuple[int, int, dict[str, int]],
) -> None:
    # aiohttp skips the resolver for IP literals: the socket factory is what refuses here, with no
    # URL check in front of it (as after a redirect aiohttp itself followed).
    _, forbidden_port, hits = servers
    async with aiohttp.ClientSession(connector=guarded_connector(EXEMPT, limit=1)) as session:
        with pytest.raises(RefusedAddress, match=r"connecting to 127\.0\.0\.2 is refused"):
            await session.get(f"http://127.0.0.2:{forbidden_port}/latest/meta-data")
    assert hits["forbidden"] == 0
