"""Objects are plain JSON: `dict` when you own them, read-only `Obj` views when the cache owns them.

The cache hands out frozen objects (mappings are `MappingProxyType`, lists are tuples) so no reader
can corrupt what other controllers see, and no read pays for a deep copy. Call `thaw()` to get a
mutable deep copy you may edit and send back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import orjson

Obj = Mapping[str, Any]
"""A Kubernetes object as read-only JSON (what the cache and the watcher hand out)."""

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def loads(data: bytes | str) -> Any:
    """Parse JSON into plain dicts and lists (orjson: about 4x the standard library's speed).

    Integers beyond 64 bits come back as floats, as the API server (Go, int64) itself reads them.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        # What orjson refuses and the standard library takes (NaN, Infinity): never from the API
        # server, but a client may hand us such bytes.
        return json.loads(data)


def _freeze_fresh(value: Any) -> Any:
    # Freezes in place the dicts `loads` just made (nobody else holds them); touches only the
    # containers, so it costs less than json's object_hook did per mapping.
    t = type(value)
    if t is dict:
        for k, v in value.items():
            tv = type(v)
            if tv is dict or tv is list:
                value[k] = _freeze_fresh(v)
        return MappingProxyType(value)
    if t is list:
        return tuple([_freeze_fresh(v) if type(v) is dict or type(v) is list else v for v in value])
    return value


def loads_frozen(data: bytes | str) -> Any:
    """Parse JSON straight into frozen objects (no copy: the parsed containers are wrapped)."""
    return _freeze_fresh(loads(data))


def freeze(value: Any) -> Any:
    """A read-only deep view of plain JSON data."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """A mutable deep copy (dicts and lists) of frozen or plain JSON data."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    return value


_DUMPS_OPTIONS = orjson.OPT_NON_STR_KEYS  # {1: x} encodes as {"1": x}, as json.dumps does


def dumps(value: Any) -> bytes:
    """JSON-encode plain or frozen data (compact, as the API server takes it)."""
    try:
        return orjson.dumps(value, default=_encode_frozen, option=_DUMPS_OPTIONS)
    except orjson.JSONEncodeError:
        # What orjson refuses and the standard library takes (integers beyond 64 bits): rare.
        return json.dumps(value, default=_encode_frozen, separators=(",", ":")).encode()


def _encode_frozen(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def meta(obj: Obj) -> Obj:
    m: Obj = obj.get("metadata") or {}
    return m


def name_of(obj: Obj) -> str:
    return str(meta(obj).get("name", ""))


def namespace_of(obj: Obj) -> str:
    return str(meta(obj).get("namespace") or "")


def key_of(obj: Obj) -> str:
    """The cache key: 'namespace/name', or 'name' for cluster-scoped objects (as client-go)."""
    ns = namespace_of(obj)
    return f"{ns}/{name_of(obj)}" if ns else name_of(obj)


def strip_noise(obj: Obj) -> Obj:
    """Default ingest transform: drop managedFields and the last-applied annotation.

    They are often the bulk of an object's bytes and no controller logic should read them.
    """
    m = obj.get("metadata")
    if not m:
        return obj
    annotations = m.get("annotations")
    if "managedFields" not in m and not (annotations and LAST_APPLIED in annotations):
        return obj
    new_meta = {k: v for k, v in m.items() if k != "managedFields"}
    if annotations and LAST_APPLIED in annotations:
        new_meta["annotations"] = MappingProxyType(
            {k: v for k, v in annotations.items() if k != LAST_APPLIED}
        )
    new_obj = dict(obj)
    new_obj["metadata"] = MappingProxyType(new_meta)
    return MappingProxyType(new_obj)


NODE_STATUS_BULK = ("images", "volumesInUse", "volumesAttached", "daemonEndpoints", "config")
"""Node status fields no controller here reads; `images` alone is often most of a Node's bytes."""


def trim_node(obj: Obj) -> Obj:
    """An ingest transform for Nodes: drop the bulky status fields (NODE_STATUS_BULK).

    Labels, taints, conditions, capacity and allocatable stay: what scheduling-minded
    controllers read. Use it through `InformerCache.informer(kinds.NODE, transform=trim_node)`.
    """
    status = obj.get("status")
    if not status or not any(k in status for k in NODE_STATUS_BULK):
        return obj
    new_obj = dict(obj)
    new_obj["status"] = MappingProxyType({k: v for k, v in status.items() if k not in NODE_STATUS_BULK})
    return MappingProxyType(new_obj)
