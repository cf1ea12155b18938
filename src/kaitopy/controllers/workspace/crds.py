"""Installing the Workspace and InferenceSet CRDs (and those of the Kaito kinds not served yet):
each created when absent, updated when the running version of kaitopy defines it differently (the
CRD is ours), then waited on until the API server serves it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kaitopy.api.constants import UNSERVED_KINDS
from kaitopy.api.crd import inferenceset_crd, unserved_crd, workspace_crd
from kaitopy.runtime import AlreadyExists, Client, Conflict, is_subset, kinds, thaw

log = logging.getLogger(__name__)


async def ensure_workspace_crd(client: Client, timeout_s: float = 60.0) -> None:
    # The kinds not served yet get their CRD too, so their creates reach the webhook's refusal.
    unserved = [unserved_crd(kind) for kind in UNSERVED_KINDS]
    for desired in (workspace_crd(), inferenceset_crd(), *unserved):
        await ensure_crd(client, desired, timeout_s)


async def ensure_crd(client: Client, desired: dict[str, Any], timeout_s: float) -> None:
    name = desired["metadata"]["name"]
    for _ in range(5):
        current = await client.get_or_none(kinds.CUSTOM_RESOURCE_DEFINITION, name)
        try:
            if current is None:
                await client.create(kinds.CUSTOM_RESOURCE_DEFINITION, desired)
                log.info("installed CRD", extra={"crd": name})
            elif not is_subset(desired["spec"], current["spec"]):
                updated: dict[str, Any] = thaw(current)
                updated["spec"] = desired["spec"]
                await client.update(kinds.CUSTOM_RESOURCE_DEFINITION, updated)
                log.info("updated CRD", extra={"crd": name})
            break
        except (AlreadyExists, Conflict):
            continue  # another replica got there first: look again
    async with asyncio.timeout(timeout_s):
        while True:
            crd = await client.get(kinds.CUSTOM_RESOURCE_DEFINITION, name)
            conds = (crd.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Established" and c.get("status") == "True" for c in conds):
                return
            await asyncio.sleep(0.2)
