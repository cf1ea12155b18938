"""An async client for any kind, speaking raw JSON over the connection pool of kubernetes_asyncio.

Objects go in and come out as plain dicts: no generated models (slow, and they drop unknown CRD
fields). kubernetes_asyncio supplies configuration loading (kubeconfig or in-cluster service account,
token refresh) and the TLS-configured connection pool; every request is counted in
`rest_client_requests_total`.

The api client's session is replaced, on first use, by one with `trust_env` off: kubernetes_asyncio's
session trusts the environment, so aiohttp looked up the proxy and ~/.netrc in worker threads for
every request (two thread hand-offs each, about 0.4 ms of CPU per request measured here; a netrc
entry for the API server would even have clashed with the bearer token). The proxy is resolved once
instead: the kubeconfig's proxy-url, else the environment's (client-go, too, reads it once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from yarl import URL

from kaitopy.runtime.client.requestinfo import request_info
from kaitopy.runtime.errors import NotFound, TransportError, api_error
from kaitopy.runtime.kinds import WELL_KNOWN, Kind, split_api_version
from kaitopy.runtime.metrics import Metrics
from kaitopy.runtime.objects import dumps, loads, name_of, namespace_of

log = logging.getLogger(__name__)

PatchType = Literal["merge", "json", "strategic"]
_PATCH_CONTENT_TYPES = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}
Query = Mapping[str, str | int | bool | None]


@dataclass(frozen=True)
class ClientSettings:
    """Tunables of the client."""

    page_size: int = 500
    """Items per list page: client-go's default; bounds the memory of one response."""
    request_timeout: float = 60.0
    """Seconds for a non-watch request: the API server's own default request timeout."""
    user_agent: str | None = None
    """Sent with every request (client-go sends binary/version (os/arch) component); the API
    server's audit log records it, which tells replicas of one service account apart."""


@dataclass(frozen=True)
class ObjectList:
    """The items of a (fully paged) list and the resourceVersion to watch from."""

    items: list[dict[str, Any]]
    resource_version: str


@dataclass(frozen=True)
class _Proxy:
    """The proxy the environment names for the API server (url None: connect directly)."""

    url: URL | None = None
    headers: dict[str, str] | None = None


def _env_proxy(server: str) -> _Proxy:
    """What aiohttp's trust_env would pick per request ($HTTPS_PROXY etc., $NO_PROXY, netrc)."""
    try:
        url, auth = get_env_proxy_for_url(URL(server))
    except LookupError:
        return _Proxy()
    return _Proxy(url, {"Proxy-Authorization": auth.encode()} if auth is not None else None)


class Client:
    """Typed async access to the API server for any `Kind`. Use as an async context manager."""

    def __init__(
        self,
        api_client: k8s_client.ApiClient,
        *,
        metrics: Metrics | None = None,
        settings: ClientSettings | None = None,
        owns_api_client: bool = False,
    ) -> None:
        self._api = api_client
        self._owns = owns_api_client
        self.metrics = metrics or Metrics()
        self.settings = settings or ClientSettings()
        self._host = str(urlsplit(str(api_client.configuration.host)).netloc)
        self._kinds: dict[tuple[str, str], Kind] = dict(WELL_KNOWN)
        self._proxy: _Proxy | None = None
        self._counters: dict[tuple[int | str, str], Any] = {}
        self._by_resource: dict[tuple[str, str], Any] = {}

    @property
    def server(self) -> str:
        """The API server's base URL, as this client reaches it."""
        return str(self._api.configuration.host)

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    async def from_kubeconfig(
        cls,
        path: str | None = None,
        *,
        context: str | None = None,
        metrics: Metrics | None = None,
        settings: ClientSettings | None = None,
    ) -> Client:
        cfg = k8s_client.Configuration()
        await k8s_config.load_kube_config(config_file=path, context=context, client_configuration=cfg)
        api = k8s_client.ApiClient(configuration=cfg)
        return cls(api, metrics=metrics, settings=settings, owns_api_client=True)

    @classmethod
    def in_cluster(cls, *, metrics: Metrics | None = None, settings: ClientSettings | None = None) -> Client:
        cfg = k8s_client.Configuration()
        k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        api = k8s_client.ApiClient(configuration=cfg)
        return cls(api, metrics=metrics, settings=settings, owns_api_client=True)

    @classmethod
    async def auto(cls, *, metrics: Metrics | None = None, settings: ClientSettings | None = None) -> Client:
        """In-cluster when a service account is mounted, else $KUBECONFIG / ~/.kube/config."""
        try:
            return cls.in_cluster(metrics=metrics, settings=settings)
        except k8s_config.ConfigException:
            return await cls.from_kubeconfig(metrics=metrics, settings=settings)

    async def close(self) -> None:
        if self._owns:
            await self._api.close()

    async def _http(self) -> tuple[aiohttp.ClientSession, _Proxy]:
        """The api client's session, made environment-blind once, and the proxy to use."""
        rest = self._api.rest_client
        pool: aiohttp.ClientSession = rest.pool_manager
        if pool.trust_env:
            # Swapped without an await in between, so Clients sharing one api client never race
            # here; the new session takes over the pool (and closes it with the api client).
            rest.pool_manager = aiohttp.ClientSession(
                connector=pool.connector,
                connector_owner=pool.connector_owner,
                trust_env=False,
                # Watch events of large objects exceed aiohttp's default read buffer (as
                # kubernetes_asyncio's own session allows for).
                read_bufsize=2**21,
            )
            pool.detach()
            pool = rest.pool_manager
        if self._proxy is None:
            if rest.proxy:  # the kubeconfig's proxy-url wins over the environment, as in client-go
                self._proxy = _Proxy(URL(rest.proxy), rest.proxy_headers or None)
            else:
                # Reads the environment and ~/.netrc (proxy credentials): once, off the event loop.
                self._proxy = await asyncio.to_thread(_env_proxy, str(self._api.configuration.host))
                if self._proxy.url is not None and not rest.proxy:
                    # kubernetes_asyncio's own calls on this api client keep the proxy, too.
                    rest.proxy, rest.proxy_headers = str(self._proxy.url), self._proxy.headers or {}
        return pool, self._proxy

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def host(self) -> str:
        return self._host

    # -- raw requests -----------------------------------------------------------------------------
    async def _headers(self, content_type: str | None) -> dict[str, str]:
        headers: dict[str, str] = {"Accept": "application/json"}
        if self.settings.user_agent:
            headers["User-Agent"] = self.settings.user_agent
        if content_type:
            headers["Content-Type"] = content_type
        await self._api.update_params_for_auth(headers, [], ["BearerToken"])
        return headers

    def _url(self, path: str, query: Query | None) -> str:
        url = str(self._api.configuration.host) + path
        if query:
            q = {
                k: ("true" if v is True else "false" if v is False else v)
                for k, v in query.items()
                if v is not None
            }
            if q:
                url += "?" + urlencode(q)
        return url

    def _count(self, code: int | str, method: str, path: str, *, watch: bool = False) -> None:
        # Labelled children are looked up once per label set: labels() costs more than inc().
        counter = self._counters.get((code, method))
        if counter is None:
            counter = self.metrics.rest_client_requests_total.labels(str(code), method, self._host)
            self._counters[(code, method)] = counter
        counter.inc()
        verb, resource = request_info(method, path, watch=watch)
        by_resource = self._by_resource.get((verb, resource))
        if by_resource is None:
            by_resource = self.metrics.rest_client_requests_by_resource_total.labels(verb, resource)
            self._by_resource[(verb, resource)] = by_resource
        by_resource.inc()

    async def request_bytes(
        self,
        method: str,
        path: str,
        *,
        query: Query | None = None,
        body: Any = None,
        content_type: str | None = None,
        request_timeout: float | None = None,
    ) -> bytes:
        """One request; returns the body of a 2xx answer, raises the matching ApiError otherwise."""
        data = None if body is None else (body if isinstance(body, bytes) else dumps(body))
        if data is not None and content_type is None:
            content_type = "application/json"
        session, proxy = await self._http()
        client_timeout = aiohttp.ClientTimeout(total=request_timeout or self.settings.request_timeout)
        try:
            async with session.request(
                method,
                self._url(path, query),
                data=data,
                headers=await self._headers(content_type),
                timeout=client_timeout,
                proxy=proxy.url,
                proxy_headers=proxy.headers,
            ) as resp:
                payload = await resp.read()
                self._count(resp.status, method, path)
                if resp.status >= 300:
                    raise api_error(
                        resp.status,
                        payload,
                        method=method,
                        path=path,
                        retry_after=resp.headers.get("Retry-After"),
                    )
                return payload
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._count("<error>", method, path)
            raise TransportError(f"{method} {path}: {exc!r}") from exc

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Like `request_bytes`, decoding the JSON answer into plain dicts."""
        payload = await self.request_bytes(method, path, **kwargs)
        return loads(payload) if payload else None

    @asynccontextmanager
    async def stream(
        self, path: str, *, query: Query | None = None, read_timeout: float | None = None
    ) -> AsyncIterator[aiohttp.StreamReader]:
        """A long-lived GET (a watch): yields the body stream; raises ApiError on a non-2xx answer.

        `read_timeout` bounds the silence between two reads, so a stalled stream is detected.
        """
        session, proxy = await self._http()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=read_timeout)
        try:
            async with session.get(
                self._url(path, query),
                headers=await self._headers(None),
                timeout=timeout,
                proxy=proxy.url,
                proxy_headers=proxy.headers,
            ) as resp:
                self._count(resp.status, "GET", path, watch=True)
                if resp.status >= 300:
                    raise api_error(resp.status, await resp.read(), method="GET", path=path)
                yield resp.content
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(f"watch {path}: {exc!r}") from exc

    # -- discovery --------------------------------------------------------------------------------
    async def kind(self, api_version: str, kind: str) -> Kind:
        """Resolve a kind (e.g. a CRD's) to its plural and scope through discovery; cached."""
        found = self._kinds.get((api_version, kind))
        if found:
            return found
        group, version = split_api_version(api_version)
        base = f"/apis/{group}/{version}" if group else f"/api/{version}"
        doc = await self.request("GET", base)
        for res in doc.get("resources", ()):
            if "/" in res["name"]:
                continue  # a subresource
            k = Kind(group, version, res["kind"], res["name"], bool(res.get("namespaced")))
            self._kinds[(api_version, k.kind)] = k
        try:
            return self._kinds[(api_version, kind)]
        except KeyError:
            raise NotFound(
                404, "NotFound", f"kind {kind} not served by {api_version}", method="GET", path=base
            ) from None

    async def kind_of(self, obj: Mapping[str, Any]) -> Kind:
        return await self.kind(str(obj["apiVersion"]), str(obj["kind"]))

    # -- verbs ------------------------------------------------------------------------------------
    async def get(self, kind: Kind, name: str, namespace: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", kind.path(namespace, name))
        return result

    async def get_or_none(self, kind: Kind, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            return await self.get(kind, name, namespace)
        except NotFound:
            return None

    async def list_pages(
        self,
        kind: Kind,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        decode: Callable[[bytes], Any] = loads,
    ) -> AsyncIterator[tuple[list[Any], str]]:
        """Pages of a list (limit/continue); yields (items, resourceVersion) per page."""
        cont: str | None = None
        while True:
            query = {
                "limit": self.settings.page_size,
                "continue": cont,
                "labelSelector": label_selector,
                "fieldSelector": field_selector,
            }
            doc = decode(await self.request_bytes("GET", kind.path(namespace), query=query))
            md = doc.get("metadata") or {}
            yield list(doc.get("items") or ()), str(md.get("resourceVersion", ""))
            cont = md.get("continue")
            if not cont:
                return

    async def list(
        self,
        kind: Kind,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> ObjectList:
        """All objects of a kind (paged, `page_size` a page), with the resourceVersion to watch from."""
        items: list[dict[str, Any]] = []
        rv = ""
        async for page, page_rv in self.list_pages(
            kind, namespace, label_selector=label_selector, field_selector=field_selector
        ):
            items.extend(page)
            rv = page_rv
        return ObjectList(items, rv)

    async def create(
        self,
        kind: Kind,
        obj: Mapping[str, Any],
        *,
        namespace: str | None = None,
        field_manager: str | None = None,
    ) -> dict[str, Any]:
        ns = namespace or namespace_of(obj) or None
        result: dict[str, Any] = await self.request(
            "POST", kind.path(ns), body=obj, query={"fieldManager": field_manager}
        )
        return result

    async def update(
        self,
        kind: Kind,
        obj: Mapping[str, Any],
        *,
        subresource: str | None = None,
        field_manager: str | None = None,
    ) -> dict[str, Any]:
        """PUT the whole object; its metadata.resourceVersion makes it fail with Conflict if stale."""
        path = kind.path(namespace_of(obj) or None, name_of(obj), subresource)
        result: dict[str, Any] = await self.request(
            "PUT", path, body=obj, query={"fieldManager": field_manager}
        )
        return result

    async def update_status(self, kind: Kind, obj: Mapping[str, Any]) -> dict[str, Any]:
        return await self.update(kind, obj, subresource="status")

    async def patch(
        self,
        kind: Kind,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        type: PatchType = "merge",
        subresource: str | None = None,
        field_manager: str | None = None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "PATCH",
            kind.path(namespace, name, subresource),
            body=patch,
            content_type=_PATCH_CONTENT_TYPES[type],
            query={"fieldManager": field_manager},
        )
        return result

    async def patch_status(
        self, kind: Kind, name: str, patch: Any, *, namespace: str | None = None, type: PatchType = "merge"
    ) -> dict[str, Any]:
        return await self.patch(kind, name, patch, namespace=namespace, type=type, subresource="status")

    async def apply(
        self,
        kind: Kind,
        obj: Mapping[str, Any],
        *,
        field_manager: str,
        force: bool = False,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """Server-side apply: `obj` states the fields this field manager owns (JSON is valid YAML)."""
        path = kind.path(namespace_of(obj) or None, name_of(obj), subresource)
        result: dict[str, Any] = await self.request(
            "PATCH",
            path,
            body=obj,
            content_type="application/apply-patch+yaml",
            query={"fieldManager": field_manager, "force": force or None},
        )
        return result

    async def delete(
        self,
        kind: Kind,
        name: str,
        namespace: str | None = None,
        *,
        propagation_policy: Literal["Background", "Foreground", "Orphan"] | None = "Background",
        resource_version: str | None = None,
    ) -> dict[str, Any] | None:
        """Delete one object; `resource_version` adds a precondition (Conflict if it changed)."""
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if propagation_policy:
            body["propagationPolicy"] = propagation_policy
        if resource_version:
            body["preconditions"] = {"resourceVersion": resource_version}
        result: dict[str, Any] | None = await self.request("DELETE", kind.path(namespace, name), body=body)
        return result
