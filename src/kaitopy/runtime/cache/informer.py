"""Informers: list + watch one kind into a Store and tell handlers what changed.

An informer lists (streaming the initial events when the server supports `sendInitialEvents`, else
paging), then watches from the list's resourceVersion with bookmarks. On 410 Gone it lists again and
reports what changed while it was away, deletions included. Other failures reconnect with jittered
backoff. `InformerCache` shares one informer per (kind, namespace, selectors) among all controllers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from kaitopy.runtime.backoff import Backoff
from kaitopy.runtime.cache.store import IndexFunc, Store
from kaitopy.runtime.cache.watcher import watch
from kaitopy.runtime.client import Client
from kaitopy.runtime.errors import ApiError, BadRequest, Forbidden, Gone, Invalid, RuntimeLibraryError
from kaitopy.runtime.kinds import Kind
from kaitopy.runtime.objects import Obj, loads_frozen, strip_noise

log = logging.getLogger(__name__)

Transform = Callable[[Obj], Obj]


class EventHandler(Protocol):
    """Receives cache changes; called on the informer's task, so it must be quick (e.g. enqueue)."""

    def on_add(self, obj: Obj) -> None: ...

    def on_update(self, old: Obj, new: Obj) -> None: ...

    def on_delete(self, obj: Obj) -> None: ...


@dataclass(frozen=True)
class InformerSettings:
    """How an informer lists and watches."""

    watch_timeout_min: int = 300
    watch_timeout_max: int = 600
    """Each watch asks the server to end it after a random 5-10 min, spreading reconnects (client-go)."""
    inactivity_timeout: float = 150.0
    """Silence (no event, no bookmark) that marks a stream stalled; servers bookmark about every minute."""
    streaming_list: bool = True
    """Try `sendInitialEvents` (WatchList) first; fall back to paged lists if the server refuses it."""
    transform: Transform | None = strip_noise
    """Applied to each object at ingest; the default drops managedFields and last-applied."""
    backoff: Callable[[], Backoff] = field(default=Backoff)
    min_watch_duration: float = 1.0
    """A watch the server ends sooner than this with no event is a failure and is reopened only
    after the backoff (client-go's "very short watch"): a server closing watches at once would
    otherwise get hundreds of requests a second from each informer."""


class Informer:
    """One kind (optionally one namespace / selector) mirrored into `self.store`."""

    def __init__(
        self,
        client: Client,
        kind: Kind,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        indexers: dict[str, IndexFunc] | None = None,
        settings: InformerSettings | None = None,
        store: Store | None = None,
    ) -> None:
        self.client = client
        self.kind = kind
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.settings = settings or InformerSettings()
        self.store = store if store is not None else Store(indexers)
        """Shared by the per-namespace informers of a `MultiNamespaceInformer`."""
        self._handlers: list[EventHandler] = []
        self._synced = asyncio.Event()
        self._rv: str | None = None
        self._streaming = self.settings.streaming_list
        self._task: asyncio.Task[None] | None = None
        self._backoff = self.settings.backoff()
        self.relists = 0
        """How many times the informer listed from scratch (first sync included)."""

    def __repr__(self) -> str:
        return f"Informer({self.kind}, namespace={self.namespace!r})"

    # -- consumers --------------------------------------------------------------------------------
    def add_handler(self, handler: EventHandler) -> None:
        """Register a handler; if the cache already holds objects it gets an add for each."""
        self._handlers.append(handler)
        for obj in self.store.list():
            handler.on_add(obj)

    def add_indexer(self, name: str, fn: IndexFunc) -> None:
        self.store.add_indexer(name, fn)

    @property
    def has_synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"informer {self.kind}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def resource_version(self) -> str | None:
        """The resourceVersion the next watch starts from (None: a list is due)."""
        return self._rv

    # -- the loop ---------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                if self._rv is None and not self._streaming:
                    await self._list()
                started = time.monotonic()
                events = await self._watch()
                if events == 0 and time.monotonic() - started < self.settings.min_watch_duration:
                    await self._pause(RuntimeLibraryError("the server ended the watch at once"))
                else:
                    self._backoff.reset()  # a healthy watch: the next failure starts from `initial`
            except Gone:
                log.info("watch expired, re-listing", extra={"kind": str(self.kind)})
                self._rv = None
            except (BadRequest, Invalid) as exc:
                if self._rv is None and self._streaming:
                    log.info(
                        "streaming list refused, using paged lists",
                        extra={"kind": str(self.kind), "error": str(exc)},
                    )
                    self._streaming = False
                    continue
                await self._pause(exc)
            except (RuntimeLibraryError, ApiError) as exc:
                await self._pause(exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A bug or a garbled stream must not end the informer silently: the cache would
                # freeze while the controllers keep trusting it. Log it and start over from a list.
                log.exception("informer failed unexpectedly", extra={"kind": str(self.kind)})
                self._rv = None
                await self._pause(exc)

    async def _pause(self, exc: Exception) -> None:
        delay = self._backoff.next_delay()
        level = logging.WARNING if not isinstance(exc, Forbidden) else logging.ERROR
        log.log(
            level,
            "list/watch failed, retrying",
            extra={"kind": str(self.kind), "error": str(exc), "retry_in_s": round(delay, 2)},
        )
        await asyncio.sleep(delay)

    def _ingest(self, obj: Obj) -> Obj:
        t = self.settings.transform
        return t(obj) if t is not None else obj

    async def _list(self) -> None:
        items: list[Obj] = []
        rv = ""
        async for page, page_rv in self.client.list_pages(
            self.kind,
            self.namespace,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            decode=loads_frozen,
        ):
            items.extend(self._ingest(o) for o in page)
            rv = page_rv
        self._apply_snapshot(items)
        self._rv = rv

    def _apply_snapshot(self, items: list[Obj]) -> None:
        self.relists += 1
        delta = self.store.replace(items, namespace=self.namespace)
        for h in self._handlers:
            for obj in delta.added:
                h.on_add(obj)
            for old, new in delta.updated:
                h.on_update(old, new)
            for obj in delta.deleted:
                h.on_delete(obj)
        self._synced.set()

    async def _watch(self) -> int:
        """Watch until the server ends the stream; returns how many events (bookmarks too) it had."""
        initial = self._rv is None  # streaming the initial list on this watch
        events = 0
        buffer: list[Obj] = []
        timeout = random.randint(self.settings.watch_timeout_min, self.settings.watch_timeout_max)
        async for event in watch(
            self.client,
            self.kind,
            namespace=self.namespace,
            resource_version=self._rv,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            timeout_seconds=timeout,
            inactivity_timeout=self.settings.inactivity_timeout,
            send_initial_events=initial,
        ):
            events += 1
            if initial:
                if event.type == "BOOKMARK":
                    if event.ends_initial_events:
                        self._apply_snapshot(buffer)
                        self._rv = event.resource_version
                        initial = False
                        buffer = []
                elif event.type == "ADDED":
                    buffer.append(self._ingest(event.object))
                continue
            self._rv = event.resource_version or self._rv
            if event.type == "BOOKMARK":
                continue
            obj = self._ingest(event.object)
            if event.type == "DELETED":
                old = self.store.delete(obj)
                for h in self._handlers:
                    h.on_delete(old if old is not None else obj)
                continue
            old = self.store.upsert(obj)
            for h in self._handlers:
                if old is None:
                    h.on_add(obj)
                else:
                    h.on_update(old, obj)
        if initial:
            self._rv = None  # the stream ended before the initial list was complete: start over
        return events


class MultiNamespaceInformer(Informer):
    """One kind in a fixed set of namespaces: an informer per namespace (so a Role in each is
    enough, no cluster-wide list), all filling one store, seen by consumers as one informer."""

    def __init__(
        self,
        client: Client,
        kind: Kind,
        namespaces: tuple[str, ...],
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        settings: InformerSettings | None = None,
    ) -> None:
        super().__init__(
            client, kind, label_selector=label_selector, field_selector=field_selector, settings=settings
        )
        self.namespaces = namespaces
        self.children = [
            Informer(
                client,
                kind,
                namespace=ns,
                label_selector=label_selector,
                field_selector=field_selector,
                settings=settings,
                store=self.store,
            )
            for ns in namespaces
        ]

    def __repr__(self) -> str:
        return f"Informer({self.kind}, namespaces={list(self.namespaces)!r})"

    def add_handler(self, handler: EventHandler) -> None:
        for child in self.children:
            child._handlers.append(handler)  # no replay per child: once below, for the whole store
        super().add_handler(handler)

    @property
    def has_synced(self) -> bool:
        return all(c.has_synced for c in self.children)

    async def wait_synced(self) -> None:
        await asyncio.gather(*(c.wait_synced() for c in self.children))

    def start(self) -> None:
        for child in self.children:
            child.start()

    async def stop(self) -> None:
        for child in self.children:
            await child.stop()


def _compose(first: Transform | None, then: Transform) -> Transform:
    if first is None:
        return then

    def both(obj: Obj) -> Obj:
        return then(first(obj))

    both.__name__ = getattr(then, "__name__", "transform")
    return both


@dataclass(frozen=True)
class _InformerKey:
    kind: Kind
    namespace: str | None
    label_selector: str | None
    field_selector: str | None


class InformerCache:
    """Shared informers: however many controllers watch a kind, it is listed and watched once."""

    def __init__(
        self,
        client: Client,
        settings: InformerSettings | None = None,
        namespaces: tuple[str, ...] | None = None,
    ) -> None:
        self.client = client
        self.settings = settings or InformerSettings()
        self.namespaces = namespaces
        """When set, a namespaced kind asked for in all namespaces is watched in these only."""
        self._informers: dict[_InformerKey, Informer] = {}
        self._transforms: dict[_InformerKey, Transform] = {}
        self._started = False

    def informer(
        self,
        kind: Kind,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        transform: Transform | None = None,
    ) -> Informer:
        """The shared informer for these parameters, created on first use.

        `transform` (e.g. `trim_node`) runs on every object after the cache's own transform, so
        the store holds the trimmed object only. It is fixed when the informer is created: ask
        with a transform before anyone asks without one (None means "whatever is set"); asking
        with a different one later is an error, since consumers would not see what they expect.
        """
        key = _InformerKey(kind, namespace, label_selector, field_selector)
        inf = self._informers.get(key)
        if inf is not None and transform is not None and self._transforms.get(key) is not transform:
            raise ValueError(
                f"the informer for {kind} already exists with transform "
                f"{getattr(self._transforms.get(key), '__name__', None)!r}; pass "
                f"transform={getattr(transform, '__name__', transform)!r} where it is first created"
            )
        settings = self.settings
        if inf is None and transform is not None:
            self._transforms[key] = transform
            settings = replace(settings, transform=_compose(settings.transform, transform))
        if inf is None and namespace is None and kind.namespaced and self.namespaces:
            inf = MultiNamespaceInformer(
                self.client,
                kind,
                self.namespaces,
                label_selector=label_selector,
                field_selector=field_selector,
                settings=settings,
            )
            self._informers[key] = inf
            if self._started:
                inf.start()
        if inf is None:
            inf = Informer(
                self.client,
                kind,
                namespace=namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                settings=settings,
            )
            self._informers[key] = inf
            if self._started:
                inf.start()
        return inf

    def store(self, kind: Kind, *, namespace: str | None = None) -> Store:
        """The store of the (unfiltered) informer for a kind; creates the informer if needed."""
        return self.informer(kind, namespace=namespace).store

    @property
    def informers(self) -> list[Informer]:
        return list(self._informers.values())

    def start(self) -> None:
        self._started = True
        for inf in self._informers.values():
            inf.start()

    @property
    def has_synced(self) -> bool:
        return all(inf.has_synced for inf in self._informers.values())

    async def wait_synced(self) -> None:
        await asyncio.gather(*(inf.wait_synced() for inf in self._informers.values()))

    async def stop(self) -> None:
        await asyncio.gather(*(inf.stop() for inf in self._informers.values()))
        self._started = False
