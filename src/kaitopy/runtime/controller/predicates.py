"""Predicates filter cache events before they enqueue anything (controller-runtime's predicate pkg).

Combine with `&`, `|` and `~`, or `and_()`, `or_()`, `not_()`.
"""

from __future__ import annotations

from collections.abc import Callable

from kaitopy.runtime.objects import Obj, meta


class Predicate:
    """Decides per event kind whether it matters. The base lets everything through."""

    def create(self, obj: Obj) -> bool:
        return True

    def update(self, old: Obj, new: Obj) -> bool:
        return True

    def delete(self, obj: Obj) -> bool:
        return True

    def __and__(self, other: Predicate) -> Predicate:
        return and_(self, other)

    def __or__(self, other: Predicate) -> Predicate:
        return or_(self, other)

    def __invert__(self) -> Predicate:
        return not_(self)


class _Funcs(Predicate):
    def __init__(
        self,
        create: Callable[[Obj], bool] | None = None,
        update: Callable[[Obj, Obj], bool] | None = None,
        delete: Callable[[Obj], bool] | None = None,
    ) -> None:
        self._create, self._update, self._delete = create, update, delete

    def create(self, obj: Obj) -> bool:
        return self._create(obj) if self._create else True

    def update(self, old: Obj, new: Obj) -> bool:
        return self._update(old, new) if self._update else True

    def delete(self, obj: Obj) -> bool:
        return self._delete(obj) if self._delete else True


def funcs(
    create: Callable[[Obj], bool] | None = None,
    update: Callable[[Obj, Obj], bool] | None = None,
    delete: Callable[[Obj], bool] | None = None,
) -> Predicate:
    """A predicate from per-event functions (a missing one lets its events through)."""
    return _Funcs(create, update, delete)


def matching(fn: Callable[[Obj], bool]) -> Predicate:
    """Only objects for which fn(obj) holds (for updates: the new object)."""
    return _Funcs(fn, lambda _old, new: fn(new), fn)


def generation_changed() -> Predicate:
    """Updates pass only when metadata.generation changed (spec edits, not status writes)."""
    return _Funcs(update=lambda old, new: meta(old).get("generation") != meta(new).get("generation"))


def labels_changed() -> Predicate:
    return _Funcs(update=lambda old, new: meta(old).get("labels") != meta(new).get("labels"))


def annotations_changed() -> Predicate:
    return _Funcs(update=lambda old, new: meta(old).get("annotations") != meta(new).get("annotations"))


def resource_version_changed() -> Predicate:
    """Drops resync updates that carry the same object."""
    return _Funcs(
        update=lambda old, new: meta(old).get("resourceVersion") != meta(new).get("resourceVersion")
    )


def and_(*preds: Predicate) -> Predicate:
    return _Funcs(
        lambda o: all(p.create(o) for p in preds),
        lambda a, b: all(p.update(a, b) for p in preds),
        lambda o: all(p.delete(o) for p in preds),
    )


def or_(*preds: Predicate) -> Predicate:
    return _Funcs(
        lambda o: any(p.create(o) for p in preds),
        lambda a, b: any(p.update(a, b) for p in preds),
        lambda o: any(p.delete(o) for p in preds),
    )


def not_(pred: Predicate) -> Predicate:
    return _Funcs(
        lambda o: not pred.create(o), lambda a, b: not pred.update(a, b), lambda o: not pred.delete(o)
    )
