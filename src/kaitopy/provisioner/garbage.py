"""Garbage collection of leaked instances: a cloud instance labelled as ours whose NodeClaim no
longer exists is deleted once it is older than a grace period. Termination normally deletes every
instance; this catches what a crash between two steps could leave behind."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kaitopy.provisioner.cloudprovider import CloudProvider, CloudProviderError
from kaitopy.provisioner.metrics import LeakMetrics
from kaitopy.provisioner.periodic import every
from kaitopy.provisioner.settings import ProvisionerSettings
from kaitopy.runtime.cache.informer import Informer

log = logging.getLogger(__name__)


class GarbageCollector:
    def __init__(
        self,
        provider: CloudProvider,
        claims: Informer,
        settings: ProvisionerSettings,
        clock: Callable[[], float] = time.time,
        metrics: LeakMetrics | None = None,
    ) -> None:
        self.provider = provider
        self.claims = claims
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.collected: list[str] = []  # what this process deleted, for logs and tests

    async def collect_once(self) -> list[str]:
        """One pass; returns the instances it started deleting."""
        await self.claims.wait_synced()  # an unsynced cache would make every instance look leaked
        try:
            instances = await self.provider.list()
        except CloudProviderError as err:
            log.warning("garbage collection: listing instances failed; will retry", extra={"error": str(err)})
            return []
        live = {str(c["metadata"]["name"]) for c in self.claims.store.list()}
        now = self.clock()
        deleted = []
        leaked = 0
        for inst in instances:
            owner = inst.claim_name or inst.name
            if owner in live or inst.state == "deleting":
                continue
            if inst.created_at is None or now - inst.created_at < self.settings.gc_grace_s:
                continue
            leaked += 1
            log.warning(
                "deleting a leaked instance: its NodeClaim is gone",
                extra={"instance": inst.name, "nodeclaim": owner, "provider": self.provider.name},
            )
            try:
                await self.provider.begin_delete(inst.name)
            except CloudProviderError as err:
                log.warning(
                    "garbage collection: delete failed", extra={"instance": inst.name, "error": str(err)}
                )
                continue
            deleted.append(inst.name)
        self.collected += deleted
        if self.metrics is not None:
            self.metrics.leaked.labels(provider=self.provider.name).set(leaked)
        return deleted

    async def run(self) -> None:
        await every(self.settings.gc_interval_s, self.collect_once, "garbage collection")
