"""Download the tuning data named by the workspace's input URLs into the data directory.

The URLs come from a user's Workspace and the download runs inside the cluster, so a URL must not
reach the pod's own network neighbourhood. Each URL, and each redirect target, is checked as the
HTTP client reads it (kaitopy.ssrf); redirects are followed here, one hop at a time, rather than by
aiohttp, so every hop is checked before it is requested. The connector (tuning.egress) then checks
every address it connects to, so a second DNS answer (rebinding) cannot slip past either.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver

from kaitopy.ssrf.addresses import IPNetwork
from kaitopy.ssrf.urls import url_problem
from kaitopy.tuning.egress import guarded_connector
from kaitopy.tuning.fetch_errors import FetchError, RefusedAddress

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_TOTAL_BYTES",
    "DEFAULT_MAX_URLS",
    "FetchError",
    "FetchOptions",
    "RefusedAddress",
    "fetch_all",
    "file_name",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 20 * 1024**3
# The workspace's URLs together (the controller passes its --tuning-max-input-bytes and
# --tuning-max-urls; these defaults match the controller's).
DEFAULT_MAX_TOTAL_BYTES = 50 * 1024**3
DEFAULT_MAX_URLS = 100
# Where the URLs come from, for errors a Workspace author reads.
FIELD = "tuning.input.urls"
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
DATA_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet"}


ALL_ADDRESSES: tuple[IPNetwork, ...] = (ip_network("0.0.0.0/0"), ip_network("::/0"))
REDIRECTS = {301, 302, 303, 307, 308}


@dataclass(frozen=True)
class FetchOptions:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    max_urls: int = DEFAULT_MAX_URLS
    attempts: int = 4
    backoff_s: float = 1.0
    timeout_s: float = 3600.0
    connect_timeout_s: float = 30.0
    concurrency: int = 4
    max_redirects: int = 10
    # Networks exempt from the address guard; empty in production. Tests name their loopback
    # server's address here (allow_private lifts the guard entirely, for the CLI's test flag).
    allowed: tuple[IPNetwork, ...] = ()
    allow_private: bool = False
    # The resolver the guard wraps (tests inject one that maps names to chosen addresses).
    resolver: AbstractResolver | None = None

    def exempt(self) -> tuple[IPNetwork, ...]:
        return ALL_ADDRESSES if self.allow_private else self.allowed


def _check_url(url: str, options: FetchOptions) -> None:
    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:
        raise FetchError(f"{url}: not a valid URL ({exc})") from None
    if scheme not in ("http", "https"):
        raise FetchError(f"{url}: only http and https URLs can be fetched")
    problem = url_problem(url, options.exempt())
    if problem is not None:
        raise RefusedAddress(f"{url} {problem}; refusing to fetch from it")


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
    session: aiohttp.ClientSession,
    url: str,
    dest: Path,
    index: int,
    taken: set[str],
    options: FetchOptions,
    budget: _Budget,
) -> Path:
    async with await _open(session, url, options) as resp:
        if resp.status != 200:
            raise _Status(resp.status, f"{url}: HTTP {resp.status} {resp.reason or ''}".rstrip())
        length = resp.content_length
        if length is not None and length > options.max_bytes:
            raise FetchError(f"{url}: {length} bytes is over the limit of {options.max_bytes} bytes")
        if length is not None and budget.used + length > budget.limit:
            budget.take(url, length)  # raises, naming the limit, before a byte is written
        name = file_name(url, resp.headers.get("Content-Disposition"), index)
        if resp.content_type == "text/html" and Path(name).suffix.lower() in DATA_SUFFIXES:
            # An expired signed URL or a login wall often answers 200 with a web page.
            raise FetchError(f"{url}: the server sent an HTML page, not {Path(name).suffix} data")
        target = _unique(dest, name, taken)
        partial = target.with_name(f".{target.name}.part")
        size = counted = 0
        try:
            with partial.open("wb") as out:
                async for chunk in resp.content.iter_chunked(1 << 20):
                    size += len(chunk)
                    if size > options.max_bytes:
                        raise FetchError(f"{url}: more than the limit of {options.max_bytes} bytes")
                    budget.take(url, len(chunk))
                    counted += len(chunk)
                    await asyncio.to_thread(out.write, chunk)
            if size == 0:
                raise FetchError(f"{url}: the response is empty")
            if length is not None and size != length:
                raise _Retryable(f"{url}: got {size} of {length} bytes")
            partial.rename(target)
        except BaseException:
            partial.unlink(missing_ok=True)
            taken.discard(target.name)
            budget.give_back(counted)  # the partial file is gone: a retry may use its bytes
            raise
    log.info("fetched %s -> %s (%d bytes)", url, target, size)
    return target


async def _open(session: aiohttp.ClientSession, url: str, options: FetchOptions) -> aiohttp.ClientResponse:
    """GET `url`, following redirects one hop at a time so each target is checked first."""
    current = url
    for _ in range(options.max_redirects + 1):
        resp = await session.get(current, allow_redirects=False)
        location = resp.headers.get("Location")
        if resp.status not in REDIRECTS or location is None:
            return resp
        resp.release()
        # Joined as text, so the check sees the Location as the server wrote it (yarl would
        # fold full-width digits to ASCII before a check on its result could see them).
        target = urljoin(current, location)
        try:
            _check_url(target, options)
        except FetchError as exc:
            raise RefusedAddress(f"{url} redirects to {exc}") from None
        current = target
    raise FetchError(f"{url}: more than {options.max_redirects} redirects")


class _Budget:
    """Bytes all downloads of one fetch may still write. Downloads run concurrently on one event
    loop, so plain arithmetic between awaits is atomic."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, url: str, n: int) -> None:
        if self.used + n > self.limit:
            raise FetchError(
                f"{FIELD}: {url} takes the downloads over their total limit of {self.limit} bytes "
                "(--max-total-bytes, the controller's --tuning-max-input-bytes); use less data, "
                "or ask the operator's admin to raise the limit"
            )
        self.used += n

    def give_back(self, n: int) -> None:
        self.used -= n


class _Retryable(FetchError):
    pass


class _Status(FetchError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _download(
    session: aiohttp.ClientSession,
    url: str,
    dest: Path,
    index: int,
    taken: set[str],
    options: FetchOptions,
    budget: _Budget,
) -> Path:
    _check_url(url, options)
    delay = options.backoff_s
    for attempt in range(1, options.attempts + 1):
        try:
            return await _download_once(session, url, dest, index, taken, options, budget)
        except RefusedAddress as exc:
            raise exc if str(exc).startswith(url) else RefusedAddress(f"{url}: {exc}") from None
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
    if len(urls) > options.max_urls:
        raise FetchError(
            f"{FIELD}: {len(urls)} URLs is over the limit of {options.max_urls} (--max-urls, the "
            "controller's --tuning-max-urls); merge the data into fewer files"
        )
    budget = _Budget(options.max_total_bytes)
    await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)
    timeout = aiohttp.ClientTimeout(total=options.timeout_s, sock_connect=options.connect_timeout_s)
    connector = guarded_connector(options.exempt(), options.concurrency, options.resolver)
    taken: set[str] = set()
    gate = asyncio.Semaphore(options.concurrency)

    async def one(index: int, url: str) -> Path:
        async with gate:
            return await _download(session, url, dest, index, taken, options, budget)

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
