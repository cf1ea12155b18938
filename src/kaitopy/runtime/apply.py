"""Writes that happen only when something changed.

`apply()` compares the desired fields with the cached object first: when every desired field already
has the desired value, *and* the object records that the last apply sent this very configuration,
it returns without a request. Otherwise it server-side applies them, and the API server prunes the
fields this field manager applied before but no longer sends. The record is a hash of the applied
configuration in the `APPLIED_HASH` annotation (the cache strips managedFields, so it cannot tell
"field removed from desired" apart from "field set by someone else" without it).
`create_or_update()` does the same with create/PUT for callers that do not want SSA.
`patch_status()` writes status only when it differs; keys dropped from status are deleted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from kaitopy.runtime.client import Client
from kaitopy.runtime.kinds import Kind
from kaitopy.runtime.objects import Obj, meta, name_of, namespace_of, thaw
from kaitopy.runtime.quantity import parse_quantity


def is_subset(desired: Any, actual: Any) -> bool:
    """True when every field in `desired` has the same value in `actual` (lists: same length, itemwise).

    Fields the server adds (defaults, status, uid...) are ignored, so a cached object read back after
    an apply counts as unchanged. A number where the server keeps a string (a quantity written as
    `nvidia.com/gpu: 1`, stored as "1") is compared as a quantity, so a user's template written that
    way does not count as changed on every pass. Other values the server normalizes (e.g. quantity
    "1000m" -> "1") never compare equal; state them in canonical form.
    """
    if isinstance(desired, Mapping):
        if not isinstance(actual, Mapping):
            return False
        return all(k in actual and is_subset(v, actual[k]) for k, v in desired.items())
    if isinstance(desired, list | tuple):
        if not isinstance(actual, list | tuple) or len(desired) != len(actual):
            return False
        return all(is_subset(d, a) for d, a in zip(desired, actual, strict=True))
    if isinstance(desired, int | float) and not isinstance(desired, bool) and isinstance(actual, str):
        try:
            return parse_quantity(desired) == parse_quantity(actual)
        except ValueError:
            return False
    return bool(desired == actual)


APPLIED_HASH = "runtime.kaitopy.io/applied-hash"
"""Annotation holding a hash of the configuration `apply()` last sent for an object."""


def with_applied_hash(desired: Mapping[str, Any]) -> dict[str, Any]:
    """`desired` (status left out) plus the APPLIED_HASH annotation of exactly that configuration."""
    body: dict[str, Any] = thaw(_without_status(desired))
    metadata = body.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    annotations.pop(APPLIED_HASH, None)
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    annotations[APPLIED_HASH] = digest[:16]
    metadata["annotations"] = annotations
    body["metadata"] = metadata
    return body


def needs_apply(desired: Mapping[str, Any], current: Obj | None) -> bool:
    """Whether `apply(desired, current=current)` writes: the rule, for a caller that decides
    before it acts (and so must know what a write will change)."""
    return current is None or not is_subset(with_applied_hash(desired), current)


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
    A field dropped from `desired` changes the applied hash, so the object is re-applied and the
    server removes that field (if no other manager also owns it).
    """
    if not needs_apply(desired, current):
        assert current is not None
        return current, False
    body = with_applied_hash(desired)
    if "status" in desired:
        body["status"] = thaw(desired["status"])
    return await client.apply(kind, body, field_manager=field_manager, force=force), True


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


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386) turning `old` into `new`: keys only in `old` become null,
    which deletes them (a plain merge of `new` would leave them in place for ever)."""
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for k, v in new.items():
        ov = old.get(k)
        if isinstance(v, Mapping) and isinstance(ov, Mapping):
            patch[k] = merge_patch(ov, v)
        else:
            patch[k] = thaw(v)
    return patch


async def patch_status(client: Client, kind: Kind, obj: Obj, status: Mapping[str, Any]) -> tuple[Obj, bool]:
    """Write `status` (merge patch on the status subresource) only if it differs from obj's.

    The patch carries obj's resourceVersion: if obj was stale the write fails with Conflict and the
    reconcile retries with fresh data instead of overwriting newer status.
    """
    old = obj.get("status") or {}
    if is_subset(status, old) and is_subset(old, status):
        return obj, False
    patch = {
        "metadata": {"resourceVersion": meta(obj).get("resourceVersion")},
        "status": merge_patch(old, status),
    }
    return await client.patch_status(kind, name_of(obj), patch, namespace=namespace_of(obj) or None), True
