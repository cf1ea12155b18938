"""Download the tuning data named by the workspace's input URLs into the data directory.

The URLs come from a user's Workspace and the download runs inside the cluster, so a URL must not
reach the pod's own network neighbourhood: every address a host name resolves to (on each
connection, redirects included, so a second DNS answer cannot slip past) must be a global one;
loopback, private, link-local (cloud metadata endpoints among them), shared and reserved ranges
are refused. Tests pass `allow_private` to reach a loopback server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 20 * 1024**3
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
DATA_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet"}


class FetchError(RuntimeError):
    """A URL could not be downloaded; the message names it."""


class RefusedAddress(FetchError):
    """The URL's host resolves to an address the fetcher must not reach."""


@dataclass(frozen=True)
class FetchOptions:
    max_bytes: int = DEFAULT_MAX_BYTES
    attempts: int = 4
    backoff_s: float = 1.0
    timeout_s: float = 3600.0
    connect_timeout_s: float = 30.0
    concurrency: int = 4
    allow_private: bool = False


def refusal(address: str) -> str | None:
    """Why `address` may not be fetched from, or None when it is a public address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata endpoints live there)"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "a non-public (shared or reserved) address"
    return None


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing hosts that resolve to any non-public address. It runs for
    every connection aiohttp opens, so redirects and re-resolution are covered too."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = DefaultResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self._allow_private:
            for r in results:
                reason = refusal(r["host"])
                if reason is not None:
                    raise RefusedAddress(
                        f"{host} resolves to {r['host']}, {reason}; refusing to fetch from it"
                    )
        return results

    async def close(self) -> None:
        await self._inner.close()


def _check_literal(url: str, allow_private: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchError(f"{url}: only http and https URLs can be fetched")
    if not parts.hostname:
        raise FetchError(f"{url}: no host in the URL")
    try:
        ipaddress.ip_address(parts.hostname)
    except ValueError:
        return  # a name: the resolver checks what it resolves to
    reason = None if allow_private else refusal(parts.hostname)
    if reason is not None:
        raise RefusedAddress(f"{url}: {parts.hostname} is {reason}; refusing to fetch from it")


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def file_name(url: str, disposition: str | None, index: int) -> str:
    """A safe local name: Content-Disposition's filename, else the URL path's last part."""
    name = ""
    if disposition:
        match = re.search(r'filename\*?=(?:UTF-8\'\')?"?([^";]+)"?', disposition, re.IGNORECASE)
        if match:
            name = unquote(match.group(1))
    if not name:
        name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    name = _UNSAFE.sub("_", os.path.basename(name)).strip("._")
    return name or f"data-{index}"


def _unique(dest: Path, name: str, taken: set[str]) -> Path:
    """A name no other URL of this fetch uses. A file left by an earlier attempt of the same fetch
    is replaced, not kept beside: a restarted step must not train on the data twice."""
    stem, dot, ext = name.partition(".")
    candidate, n = name, 1
    while candidate in taken:
        candidate = f"{stem}-{n}{dot}{ext}"
        n += 1
    taken.add(candidate)
    return dest / candidate


async def _download_once(
    session: aiohttp.ClientSession, url: str, dest: Path, index: int, taken: set[str], options: FetchOptions
) -> Path:
    async with session.get(url) as resp:
        if resp.status != 200:
            raise _Status(resp.status, f"{url}: HTTP {resp.status} {resp.reason or ''}".rstrip())
        length = resp.content_length
        if length is not None and length > options.max_bytes:
            raise FetchError(f"{url}: {length} bytes is over the limit of {options.max_bytes} bytes")
        name = file_name(url, resp.headers.get("Content-Disposition"), index)
        if resp.content_type == "text/html" and Path(name).suffix.lower() in DATA_SUFFIXES:
            # An expired signed URL or a login wall often answers 200 with a web page.
            raise FetchError(f"{url}: the server sent an HTML page, not {Path(name).suffix} data")
        target = _unique(dest, name, taken)
        partial = target.with_name(f".{target.name}.part")
        size = 0
        try:
            with partial.open("wb") as out:
                async for chunk in resp.content.iter_chunked(1 << 20):
                    size += len(chunk)
                    if size > options.max_bytes:
                        raise FetchError(f"{url}: more than the limit of {options.max_bytes} bytes")
                    await asyncio.to_thread(out.write, chunk)
            if size == 0:
                raise FetchError(f"{url}: the response is empty")
            if length is not None and size != length:
                raise _Retryable(f"{url}: got {size} of {length} bytes")
            partial.rename(target)
        except BaseException:
            partial.unlink(missing_ok=True)
            taken.discard(target.name)
            raise
    log.info("fetched %s -> %s (%d bytes)", url, target, size)
    return target


class _Retryable(FetchError):
    pass


class _Status(FetchError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _download(
    session: aiohttp.ClientSession, url: str, dest: Path, index: int, taken: set[str], options: FetchOptions
) -> Path:
    _check_literal(url, options.allow_private)
    delay = options.backoff_s
    for attempt in range(1, options.attempts + 1):
        try:
            return await _download_once(session, url, dest, index, taken, options)
        except RefusedAddress:
            raise
        except _Status as exc:
            if exc.status not in RETRYABLE_STATUS or attempt == options.attempts:
                raise FetchError(str(exc)) from None
            problem: str = str(exc)
        except _Retryable as exc:
            if attempt == options.attempts:
                raise FetchError(str(exc)) from None
            problem = str(exc)
        except FetchError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, RefusedAddress) else None
            if cause is not None:
                raise FetchError(f"{url}: {cause}") from None
            if attempt == options.attempts:
                raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from None
            problem = f"{type(exc).__name__}: {exc}"
        log.warning(
            "fetching %s failed (attempt %d/%d): %s; retrying", url, attempt, options.attempts, problem
        )
        await asyncio.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


async def fetch_all(urls: list[str], dest: Path, options: FetchOptions | None = None) -> list[Path]:
    """Download every URL into `dest`; the first failure fails the whole fetch."""
    options = options or FetchOptions()
    if not urls:
        raise FetchError("no URLs to fetch")
    await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)
    timeout = aiohttp.ClientTimeout(total=options.timeout_s, sock_connect=options.connect_timeout_s)
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(options.allow_private), limit=options.concurrency
    )
    taken: set[str] = set()
    gate = asyncio.Semaphore(options.concurrency)

    async def one(index: int, url: str) -> Path:
        async with gate:
            return await _download(session, url, dest, index, taken, options)

    async with aiohttp.ClientSession(timeout=timeout, connector=connector, trust_env=False) as session:
        results: list[Any] = await asyncio.gather(
            *(one(i, u) for i, u in enumerate(urls)), return_exceptions=True
        )
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for e in errors[1:]:
            log.error("%s", e)
        first = errors[0]
        raise first if isinstance(first, FetchError) else FetchError(str(first))
    return list(results)
