"""The cache of one kind: frozen objects by key, with indexes kept up to date on every change.

Reads never copy: they return the stored read-only objects (see `objects.Obj`).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from kaitopy.runtime.objects import Obj, key_of, meta, namespace_of

IndexFunc = Callable[[Obj], Iterable[str]]
"""Maps an object to the index values it is filed under (e.g. its owners' UIDs)."""

NAMESPACE_INDEX = "namespace"


def index_by_owner_uid(obj: Obj) -> Iterable[str]:
    return [str(ref.get("uid")) for ref in meta(obj).get("ownerReferences") or () if ref.get("uid")]


def index_by_label(label: str) -> IndexFunc:
    """An index on one label's value."""

    def by_label(obj: Obj) -> Iterable[str]:
        value = (meta(obj).get("labels") or {}).get(label)
        return [value] if value is not None else []

    return by_label


MATCH_ALL = "*"
"""Index value under which `index_by_match_labels` files objects whose selector has no matchLabels."""


def index_by_match_labels(match_labels_of: Callable[[Obj], Mapping[str, str] | None]) -> IndexFunc:
    """An index of *selecting* objects (e.g. ones with a node selector) by what they select.

    Each object is filed under every "key=value" of its matchLabels, or under MATCH_ALL when it has
    none. An object whose selector matches a label set has all its pairs in that set, so
    `Store.selecting(index, labels)` finds it without scanning the whole store; the candidates
    still need the full selector check (matchExpressions, every pair).
    """

    def by_match_labels(obj: Obj) -> Iterable[str]:
        pairs = match_labels_of(obj) or {}
        return [f"{k}={v}" for k, v in pairs.items()] or [MATCH_ALL]

    return by_match_labels


@dataclass(frozen=True)
class Delta:
    """What `Store.replace` found changed: the watch events that were missed."""

    added: list[Obj]
    updated: list[tuple[Obj, Obj]]
    deleted: list[Obj]


class Store:
    """Objects of one kind by 'namespace/name' key, with named indexes (namespace always)."""

    def __init__(self, indexers: dict[str, IndexFunc] | None = None) -> None:
        self._items: dict[str, Obj] = {}
        self._indexers: dict[str, IndexFunc] = {NAMESPACE_INDEX: lambda o: [namespace_of(o)]}
        self._indexers.update(indexers or {})
        self._indices: dict[str, dict[str, set[str]]] = {name: {} for name in self._indexers}

    def add_indexer(self, name: str, fn: IndexFunc) -> None:
        """Add an index; existing objects are indexed at once."""
        if name in self._indexers:
            return
        self._indexers[name] = fn
        self._indices[name] = {}
        for key, obj in self._items.items():
            self._index(name, fn, key, obj)

    # -- reads ------------------------------------------------------------------------------------
    def get(self, key: str) -> Obj | None:
        return self._items.get(key)

    def get_by_name(self, name: str, namespace: str | None = None) -> Obj | None:
        return self._items.get(f"{namespace}/{name}" if namespace else name)

    def list(self, namespace: str | None = None) -> builtins.list[Obj]:
        if namespace is None:
            return list(self._items.values())
        return self.by_index(NAMESPACE_INDEX, namespace)

    def keys(self) -> builtins.list[str]:
        return list(self._items)

    def by_index(self, index: str, value: str) -> builtins.list[Obj]:
        keys = self._indices[index].get(value, ())
        return [self._items[k] for k in keys]

    def selecting(self, index: str, labels: Mapping[str, str]) -> builtins.list[Obj]:
        """Objects an `index_by_match_labels` index says may select an object with `labels`."""
        idx = self._indices[index]
        keys: set[str] = set(idx.get(MATCH_ALL, ()))
        for k, v in labels.items():
            keys.update(idx.get(f"{k}={v}", ()))
        return [self._items[key] for key in sorted(keys) if key in self._items]

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    # -- writes (the reflector's) -----------------------------------------------------------------
    def upsert(self, obj: Obj) -> Obj | None:
        """Store obj; returns the previous version, if any."""
        key = key_of(obj)
        old = self._items.get(key)
        if old is not None:
            self._unindex(key, old)
        self._items[key] = obj
        for name, fn in self._indexers.items():
            self._index(name, fn, key, obj)
        return old

    def delete(self, obj: Obj) -> Obj | None:
        key = key_of(obj)
        old = self._items.pop(key, None)
        if old is not None:
            self._unindex(key, old)
        return old

    def replace(self, objs: Iterable[Obj], namespace: str | None = None) -> Delta:
        """Make the store hold exactly `objs` (after a re-list); returns what changed. With a
        namespace, only that namespace's objects are replaced (informers of several namespaces
        sharing one store each re-list their own)."""
        added: list[Obj] = []
        updated: list[tuple[Obj, Obj]] = []
        seen: set[str] = set()
        for obj in objs:
            seen.add(key_of(obj))
            old = self.upsert(obj)
            if old is None:
                added.append(obj)
            elif meta(old).get("resourceVersion") != meta(obj).get("resourceVersion"):
                updated.append((old, obj))
        in_namespace = self._indices[NAMESPACE_INDEX].get(namespace or "", set())
        scope = list(self._items) if namespace is None else list(in_namespace)
        deleted = [self._items[k] for k in scope if k not in seen]
        for obj in deleted:
            self.delete(obj)
        return Delta(added, updated, deleted)

    def _index(self, name: str, fn: IndexFunc, key: str, obj: Obj) -> None:
        index = self._indices[name]
        for value in fn(obj):
            index.setdefault(value, set()).add(key)

    def _unindex(self, key: str, obj: Obj) -> None:
        for name, fn in self._indexers.items():
            index = self._indices[name]
            for value in fn(obj):
                keys = index.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[value]
