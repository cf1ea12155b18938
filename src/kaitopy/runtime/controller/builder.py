"""Declaring a controller: what it reconciles, what it owns, what else it watches."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from kaitopy.runtime.cache.informer import Informer, InformerCache
from kaitopy.runtime.controller.controller import Controller, ControllerSettings
from kaitopy.runtime.controller.handlers import EnqueueHandler, MapFunc, owner_mapper, request_for
from kaitopy.runtime.controller.predicates import Predicate
from kaitopy.runtime.controller.reconcile import Reconciler, Request
from kaitopy.runtime.controller.workqueue import WorkQueue
from kaitopy.runtime.kinds import Kind
from kaitopy.runtime.metrics import Metrics

if TYPE_CHECKING:
    from kaitopy.runtime.clock import Clock


class ControllerBuilder:
    """`for_(kind)`, then any `owns()` / `watches()`, then `build(reconcile)`."""

    def __init__(
        self,
        name: str,
        cache: InformerCache,
        metrics: Metrics,
        *,
        on_build: Callable[[Controller], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._name = name
        self._cache = cache
        self._metrics = metrics
        self._on_build = on_build
        self._clock = clock
        self._for: tuple[Kind, str | None, tuple[Predicate, ...]] | None = None
        self._watches: list[tuple[Kind, MapFunc, tuple[Predicate, ...], str | None, str | None]] = []
        self._settings = ControllerSettings()

    def for_(
        self, kind: Kind, *, predicates: Iterable[Predicate] = (), namespace: str | None = None
    ) -> ControllerBuilder:
        """The kind this controller reconciles: each event enqueues the object's own Request."""
        self._for = (kind, namespace, tuple(predicates))
        return self

    def owns(
        self,
        kind: Kind,
        *,
        predicates: Iterable[Predicate] = (),
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> ControllerBuilder:
        """Objects this controller creates: events enqueue their controller owner (of the `for_` kind).
        A label selector keeps the cache to the objects this controller labels as its own."""
        self._watches.append((kind, _OwnedBy(self), tuple(predicates), namespace, label_selector))
        return self

    def watches(
        self,
        kind: Kind,
        map_fn: MapFunc,
        *,
        predicates: Iterable[Predicate] = (),
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> ControllerBuilder:
        """Any other kind: `map_fn(obj)` says which Requests an event on obj concerns."""
        self._watches.append((kind, map_fn, tuple(predicates), namespace, label_selector))
        return self

    def with_settings(self, settings: ControllerSettings) -> ControllerBuilder:
        self._settings = settings
        return self

    @property
    def for_kind(self) -> Kind:
        if self._for is None:
            raise ValueError(f"controller {self._name}: for_() was not called")
        return self._for[0]

    def build(self, reconcile: Reconciler) -> Controller:
        kind, namespace, preds = self._for or (None, None, ())
        if kind is None:
            raise ValueError(f"controller {self._name}: for_() was not called")
        queue: WorkQueue[Request] = WorkQueue(self._name, clock=self._clock, metrics=self._metrics)
        primary = self._cache.informer(kind, namespace=namespace)
        informers: list[Informer] = [primary]
        handlers: list[tuple[Informer, EnqueueHandler]] = [
            (primary, EnqueueHandler(queue, request_for, preds))
        ]
        for wkind, map_fn, wpreds, wns, wsel in self._watches:
            inf = self._cache.informer(wkind, namespace=wns, label_selector=wsel)
            if isinstance(map_fn, _OwnedBy):
                map_fn = owner_mapper(kind)
            informers.append(inf)
            handlers.append((inf, EnqueueHandler(queue, map_fn, wpreds)))
        for inf, handler in handlers:
            inf.add_handler(handler)
        controller = Controller(
            self._name,
            reconcile,
            queue=queue,
            informers=informers,
            primary=primary,
            settings=self._settings,
            metrics=self._metrics,
        )
        if self._on_build is not None:
            self._on_build(controller)
        return controller


class _OwnedBy:
    """Placeholder map function for owns(): resolved to the `for_` kind's owner mapper at build()."""

    def __init__(self, builder: ControllerBuilder) -> None:
        self.builder = builder

    def __call__(self, obj: object) -> Iterable[Request]:  # never called: replaced in build()
        return ()
