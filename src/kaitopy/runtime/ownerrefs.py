"""Owner references: who owns an object, and the controller reference that makes GC and owns() work."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from kaitopy.runtime.errors import RuntimeLibraryError
from kaitopy.runtime.objects import Obj, meta


class AlreadyOwned(RuntimeLibraryError):
    """The object already has a different controller owner."""


def owner_reference(
    owner: Obj, *, controller: bool = True, block_owner_deletion: bool = True
) -> dict[str, Any]:
    """An ownerReference to `owner` (which must have been read from the server: it needs the uid)."""
    m = meta(owner)
    if not m.get("uid"):
        raise ValueError(f"owner {m.get('name')} has no uid; read it from the API server first")
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": m["name"],
        "uid": m["uid"],
        "controller": controller,
        "blockOwnerDeletion": block_owner_deletion,
    }


def controller_of(obj: Obj) -> Obj | None:
    """The ownerReference marked controller, if any."""
    for ref in meta(obj).get("ownerReferences") or ():
        if ref.get("controller"):
            ref_obj: Obj = ref
            return ref_obj
    return None


def is_controlled_by(obj: Obj, owner: Obj) -> bool:
    ref = controller_of(obj)
    return ref is not None and ref.get("uid") == meta(owner).get("uid")


def set_controller_reference(owner: Obj, obj: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Make `owner` the controller of the (mutable) `obj`; raises AlreadyOwned if another controller is."""
    ref = owner_reference(owner)
    md = obj.setdefault("metadata", {})
    refs: list[dict[str, Any]] = [dict(r) for r in md.get("ownerReferences") or ()]
    for i, existing in enumerate(refs):
        if existing.get("controller") and existing.get("uid") != ref["uid"]:
            raise AlreadyOwned(
                f"{md.get('name')} is already controlled by {existing.get('kind')}/{existing.get('name')}"
            )
        if existing.get("uid") == ref["uid"]:
            refs[i] = ref
            break
    else:
        refs.append(ref)
    md["ownerReferences"] = refs
    return obj
