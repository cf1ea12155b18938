"""Installing the provisioner's CRDs and its default node class when they are absent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from kaitopy.provisioner.crds import nodeclaim_crd, nodeclass_crd
from kaitopy.provisioner.lifecycle import NODECLASS
from kaitopy.runtime import AlreadyExists, Client, kinds

log = logging.getLogger(__name__)
DEFAULT_NODECLASS = "default"


async def ensure_crds(client: Client, timeout_s: float = 60.0) -> None:
    """Create each CRD that does not exist yet (an existing one — Karpenter's, say — is left as
    it is) and wait until the API server serves it."""
    for crd in (nodeclaim_crd(), nodeclass_crd()):
        name = crd["metadata"]["name"]
        if await client.get_or_none(kinds.CUSTOM_RESOURCE_DEFINITION, name) is None:
            try:
                await client.create(kinds.CUSTOM_RESOURCE_DEFINITION, crd)
                log.info("installed CRD", extra={"crd": name})
            except AlreadyExists:
                pass
        await _wait_established(client, name, timeout_s)


async def _wait_established(client: Client, name: str, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            crd: dict[str, Any] = await client.get(kinds.CUSTOM_RESOURCE_DEFINITION, name)
            conds = (crd.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Established" and c.get("status") == "True" for c in conds):
                return
            await asyncio.sleep(0.2)


async def ensure_default_nodeclass(client: Client) -> None:
    body = {
        "apiVersion": NODECLASS.api_version,
        "kind": NODECLASS.kind,
        "metadata": {"name": DEFAULT_NODECLASS},
        "spec": {},
    }
    if await client.get_or_none(NODECLASS, DEFAULT_NODECLASS) is None:
        with contextlib.suppress(AlreadyExists):
            await client.create(NODECLASS, body)
