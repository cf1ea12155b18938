"""Finalizers: add before any side effect, remove once cleanup is done. Both are no-ops if already so."""

from __future__ import annotations

from typing import Any

from kaitopy.runtime.client import Client
from kaitopy.runtime.kinds import Kind
from kaitopy.runtime.objects import Obj, meta, name_of, namespace_of


def has_finalizer(obj: Obj, finalizer: str) -> bool:
    return finalizer in (meta(obj).get("finalizers") or ())


def is_deleting(obj: Obj) -> bool:
    return meta(obj).get("deletionTimestamp") is not None


async def _set_finalizers(client: Client, kind: Kind, obj: Obj, finalizers: list[str]) -> dict[str, Any]:
    # resourceVersion in the patch makes it conditional: a concurrent change gives Conflict, not a lost write.
    patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta(obj).get("resourceVersion")}}
    return await client.patch(kind, name_of(obj), patch, namespace=namespace_of(obj) or None)


async def add_finalizer(client: Client, kind: Kind, obj: Obj, finalizer: str) -> Obj:
    """Ensure `finalizer` is on obj; returns the object as stored (obj itself when nothing was written)."""
    if has_finalizer(obj, finalizer):
        return obj
    return await _set_finalizers(client, kind, obj, [*(meta(obj).get("finalizers") or ()), finalizer])


async def remove_finalizer(client: Client, kind: Kind, obj: Obj, finalizer: str) -> Obj:
    """Ensure `finalizer` is gone from obj (no write if absent)."""
    if not has_finalizer(obj, finalizer):
        return obj
    rest = [f for f in meta(obj).get("finalizers") or () if f != finalizer]
    return await _set_finalizers(client, kind, obj, rest)
