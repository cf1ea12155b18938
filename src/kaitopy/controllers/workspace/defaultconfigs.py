"""Kaito's default ConfigMaps in a workspace's namespace: which ConfigMap a workload mounts, and the
copy of an operator-namespace template made for it.

Only the template names (kaitopy.api.defaultconfigs) are ever copied, and only from the operator's
own namespace: they are public defaults, so the copy gives the author nothing they lack. A
ConfigMap of that name already in the namespace is never overwritten: when the Workspace names it,
it is the user's (the webhook checked they may read it); when tuning.config is empty, one we did not
make is left alone and the built-in defaults (the same values) apply instead."""

from __future__ import annotations

import logging
from typing import Any

from kaitopy.api.defaultconfigs import COPY_LABEL, is_default_config
from kaitopy.runtime import AlreadyExists, Client, kinds
from kaitopy.runtime.objects import Obj
from kaitopy.runtime.ownerrefs import owner_reference

log = logging.getLogger(__name__)


def _is_copy(cm: Obj) -> bool:
    return (cm.get("metadata", {}).get("labels") or {}).get(COPY_LABEL) == "true"


def _owner(ws: Obj) -> dict[str, Any]:
    # Not the controller reference: several workspaces of a namespace may share one copy, and it
    # goes when the last of them does.
    return owner_reference(ws, controller=False, block_owner_deletion=False)


def copy_of(default: Obj, ws: Obj) -> dict[str, Any]:
    """The copy of operator-namespace template `default` for workspace `ws` (data only)."""
    md = ws["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": default["metadata"]["name"],
            "namespace": md["namespace"],
            "labels": {COPY_LABEL: "true", "app.kubernetes.io/managed-by": "kaitopy"},
            "ownerReferences": [_owner(ws)],
        },
        "data": dict(default.get("data") or {}),
    }


async def resolve_config(
    client: Client, ws: Obj, named: str | None, template: str | None, operator_namespace: str
) -> str | None:
    """The ConfigMap to mount: `named` (the Workspace's config field) or, when empty, `template`
    (the method's default, None for none), copied from `operator_namespace` where missing. None:
    mount nothing (the built-in defaults)."""
    if named and not is_default_config(named):
        return named  # the user's own ConfigMap, checked at admission
    wanted = named or template
    if not wanted:
        return None
    md = ws["metadata"]
    namespace = str(md["namespace"])
    existing = await client.get_or_none(kinds.CONFIG_MAP, wanted, namespace)
    if existing is None and namespace != operator_namespace:
        default = await client.get_or_none(kinds.CONFIG_MAP, wanted, operator_namespace)
        if default is None:
            # Not installed (manifests/ and the chart ship it): a named one fails to mount, visibly.
            return named or None
        try:
            await client.create(kinds.CONFIG_MAP, copy_of(default, ws))
            log.info(
                "copied default ConfigMap",
                extra={"configmap": wanted, "namespace": namespace, "workspace": md["name"]},
            )
            return wanted
        except AlreadyExists:
            existing = await client.get_or_none(kinds.CONFIG_MAP, wanted, namespace)
    if existing is None:
        return named or None
    if _is_copy(existing):
        await _add_owner(client, existing, ws)
        return wanted
    # Someone's own ConfigMap of that name: used only where the Workspace names it.
    return named or None


async def _add_owner(client: Client, cm: Obj, ws: Obj) -> None:
    refs = [dict(r) for r in cm["metadata"].get("ownerReferences") or ()]
    if any(r.get("uid") == ws["metadata"].get("uid") for r in refs):
        return
    await client.patch(
        kinds.CONFIG_MAP,
        cm["metadata"]["name"],
        # resourceVersion makes a concurrent change (another workspace's reference) a Conflict: retried.
        {
            "metadata": {
                "ownerReferences": [*refs, _owner(ws)],
                "resourceVersion": cm["metadata"]["resourceVersion"],
            }
        },
        namespace=cm["metadata"]["namespace"],
    )
