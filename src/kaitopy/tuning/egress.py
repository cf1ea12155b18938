"""The downloader's connection guard: no socket to a forbidden address, whatever led to it.

URL checks see only what was written; the address a connection actually goes to comes from DNS
(which may answer differently on each lookup: rebinding) or from a redirect. aiohttp skips its
resolver for IP-literal hosts, so two hooks are needed: the resolver refuses names that resolve to
a forbidden address (with the name in the message), and the socket factory, which aiohttp calls
with the final address just before every connect, refuses forbidden addresses whatever their
origin.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from ipaddress import ip_address

import aiohttp
from aiohappyeyeballs import AddrInfoType
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from kaitopy.ssrf.addresses import IPNetwork, refusal
from kaitopy.tuning.fetch_errors import RefusedAddress


class GuardedResolver(AbstractResolver):
    """Resolve with `inner` (the system resolver by default), refusing a name when any address it
    resolves to is forbidden."""

    def __init__(self, allowed: tuple[IPNetwork, ...], inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()
        self._allowed = allowed

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for r in results:
            why = refusal(ip_address(r["host"].split("%", 1)[0]), self._allowed)
            if why is not None:
                raise RefusedAddress(f"{host} resolves to {r['host']}, {why}; refusing to fetch from it")
        return results

    async def close(self) -> None:
        await self._inner.close()


def socket_factory(allowed: tuple[IPNetwork, ...]) -> Callable[[AddrInfoType], socket.socket]:
    """A factory aiohttp calls with each address it is about to connect to; it refuses forbidden
    ones before a socket exists, so no packet is sent to them."""

    def make(addr_info: AddrInfoType) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        address = ip_address(str(sockaddr[0]).split("%", 1)[0])
        why = refusal(address, allowed)
        if why is None and len(sockaddr) == 4 and sockaddr[3]:
            why = "an address with a zone index"
        if why is not None:
            raise RefusedAddress(f"connecting to {address} is refused: it is {why}")
        return socket.socket(family, type_, proto)

    return make


def guarded_connector(
    allowed: tuple[IPNetwork, ...], limit: int, resolver: AbstractResolver | None = None
) -> aiohttp.TCPConnector:
    """A connector that never opens a connection to a forbidden address."""
    return aiohttp.TCPConnector(
        resolver=GuardedResolver(allowed, resolver), socket_factory=socket_factory(allowed), limit=limit
    )
