"""Writes that happen only when something changed.

`apply()` compares the desired fields with the cached object first: when every desired field already
has the desired value it returns without a request. Otherwise it server-side applies them.
`create_or_update()` does the same with create/PUT for callers that do not want SSA.
`patch_status()` writes status only when it differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kaitopy.runtime.client import Client
from kaitopy.runtime.kinds import Kind
from kaitopy.runtime.objects import Obj, meta, name_of, namespace_of, thaw


def is_subset(desired: Any, actual: Any) -> bool:
    """True when every field in `desired` has the same value in `actual` (lists: same length, itemwise).

    Fields the server adds (defaults, status, uid...) are ignored, so a cached object read back after
    an apply counts as unchanged. Caveat: values the server normalizes (e.g. quantity "1000m" -> "1")
    never compare equal; state them in canonical form.
    """
    if isinstance(desired, Mapping):
        if not isinstance(actual, Mapping):
            return False
        return all(k in actual and is_subset(v, actual[k]) for k, v in desired.items())
    if isinstance(desired, list | tuple):
        if not isinstance(actual, list | tuple) or len(desired) != len(actual):
            return False
        return all(is_subset(d, a) for d, a in zip(desired, actual, strict=True))
    return bool(desired == actual)


async def apply(
    client: Client,
    kind: Kind,
    desired: Mapping[str, Any],
    *,
    current: Obj | None,
    field_manager: str,
    force: bool = True,
) -> tuple[Obj, bool]:
    """Server-side apply `desired` unless `current` (usually from the cache) already matches.

    Returns (object, written). `force` takes over fields another manager set, as controllers should.
    """
    if current is not None and is_subset(_without_status(desired), current):
        return current, False
    return await client.apply(kind, desired, field_manager=field_manager, force=force), True


def _without_status(desired: Mapping[str, Any]) -> Mapping[str, Any]:
    return {k: v for k, v in desired.items() if k != "status"}


def _merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> None:
    for k, v in overlay.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = thaw(v)


async def create_or_update(
    client: Client, kind: Kind, desired: Mapping[str, Any], *, current: Obj | None
) -> tuple[Obj, bool]:
    """Create `desired`, or merge it into `current` and PUT the result if that changes anything."""
    if current is None:
        return await client.create(kind, desired), True
    if is_subset(_without_status(desired), current):
        return current, False
    merged = thaw(current)
    _merge(merged, _without_status(desired))
    return await client.update(kind, merged), True


async def patch_status(client: Client, kind: Kind, obj: Obj, status: Mapping[str, Any]) -> tuple[Obj, bool]:
    """Write `status` (merge patch on the status subresource) only if it differs from obj's.

    The patch carries obj's resourceVersion: if obj was stale the write fails with Conflict and the
    reconcile retries with fresh data instead of overwriting newer status.
    """
    if is_subset(status, obj.get("status") or {}) and is_subset(obj.get("status") or {}, status):
        return obj, False
    patch = {"metadata": {"resourceVersion": meta(obj).get("resourceVersion")}, "status": thaw(status)}
    return await client.patch_status(kind, name_of(obj), patch, namespace=namespace_of(obj) or None), True
