"""Event handlers turning cache events into reconcile Requests (controller-runtime's handler pkg)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kaitopy.runtime.controller.predicates import Predicate
from kaitopy.runtime.controller.reconcile import Request
from kaitopy.runtime.controller.workqueue import WorkQueue
from kaitopy.runtime.kinds import Kind
from kaitopy.runtime.objects import Obj, meta, name_of, namespace_of

MapFunc = Callable[[Obj], Iterable[Request]]


def request_for(obj: Obj) -> list[Request]:
    """The object's own Request (what for_() enqueues)."""
    return [Request(namespace_of(obj), name_of(obj))]


def owner_mapper(owner: Kind, *, controller_only: bool = True) -> MapFunc:
    """Requests for the owners of kind `owner` named in an object's ownerReferences."""

    def owners(obj: Obj) -> Iterable[Request]:
        ns = namespace_of(obj) if owner.namespaced else ""
        for ref in meta(obj).get("ownerReferences") or ():
            if controller_only and not ref.get("controller"):
                continue
            if (
                ref.get("kind") == owner.kind
                and ref.get("apiVersion", "").split("/")[0] == (owner.api_version.split("/")[0])
            ):
                yield Request(ns, str(ref.get("name")))

    return owners


class EnqueueHandler:
    """Filters events through predicates, maps objects to Requests and adds them to a queue."""

    def __init__(
        self, queue: WorkQueue[Request], map_fn: MapFunc, predicates: Iterable[Predicate] = ()
    ) -> None:
        self.queue = queue
        self.map_fn = map_fn
        self.predicates = tuple(predicates)

    def _enqueue(self, obj: Obj) -> None:
        for req in self.map_fn(obj):
            self.queue.add(req)

    def on_add(self, obj: Obj) -> None:
        if all(p.create(obj) for p in self.predicates):
            self._enqueue(obj)

    def on_update(self, old: Obj, new: Obj) -> None:
        if all(p.update(old, new) for p in self.predicates):
            self._enqueue(new)
            if self.map_fn is not request_for:  # an owner/mapping may have changed: tell the old target too
                self._enqueue(old)

    def on_delete(self, obj: Obj) -> None:
        if all(p.delete(obj) for p in self.predicates):
            self._enqueue(obj)
