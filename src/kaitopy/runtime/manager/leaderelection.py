"""Leader election on a coordination.k8s.io/v1 Lease (client-go's leaderelection semantics).

Expiry is judged on the local clock from when *we* last saw the lease record change, never from the
server's timestamps, so clock skew between nodes cannot make two leaders.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kaitopy.runtime.client import Client
from kaitopy.runtime.clock import Clock, RealClock
from kaitopy.runtime.errors import ApiError, LeadershipLost, NotFound, RuntimeLibraryError
from kaitopy.runtime.kinds import LEASE
from kaitopy.runtime.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaderElectionSettings:
    """Lease timings (controller-runtime's defaults)."""

    lease_name: str
    namespace: str
    identity: str
    lease_duration: float = 15.0
    """How long followers wait after the last renewal they saw before taking over."""
    renew_deadline: float = 10.0
    """The leader gives up (and must exit) if it cannot renew for this long; < lease_duration."""
    retry_period: float = 2.0
    """Pause between attempts to acquire or renew."""
    release_on_cancel: bool = True
    """Clear the holder on clean shutdown, so a successor need not wait out the lease."""


def _micro_time(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """`await acquire()` blocks until leader; `await hold()` renews until the lease is lost (raises)."""

    def __init__(
        self,
        client: Client,
        settings: LeaderElectionSettings,
        *,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self._clock = clock or RealClock()
        self._gauge = (metrics or client.metrics).leader_election_master_status.labels(settings.lease_name)
        self._observed: dict[str, Any] | None = None  # last lease spec seen
        self._observed_at = 0.0
        self._observed_rv = ""
        self.is_leader = False

    async def acquire(self) -> None:
        s = self.settings
        log.info(
            "waiting for leadership", extra={"lease": f"{s.namespace}/{s.lease_name}", "identity": s.identity}
        )
        while not await self._try_acquire_or_renew():  # noqa: ASYNC110 (polls a remote lease)
            await asyncio.sleep(s.retry_period)
        self._became(True)

    async def hold(self) -> None:
        """Renew every retry_period; raise LeadershipLost once renew_deadline passed without a renewal.

        The deadline is kept *during* an attempt, not only after it: each attempt is cancelled when
        the deadline comes, and a renewal counts from when its attempt started (the server may have
        recorded it at any point after that). So the leader stops by last renewal + renew_deadline
        (10 s), well before a follower may take over (lease_duration, 15 s after it saw the renewal).
        """
        s = self.settings
        last_renew = self._clock.now()
        while True:
            remaining = last_renew + s.renew_deadline - self._clock.now()
            await asyncio.sleep(max(0.0, min(s.retry_period, remaining)))
            started = self._clock.now()
            remaining = last_renew + s.renew_deadline - started
            ok = False
            if remaining > 0:
                try:
                    ok = await asyncio.wait_for(self._try_acquire_or_renew(), remaining)
                except TimeoutError:
                    ok = False
            if ok:
                last_renew = started
            elif self._clock.now() - last_renew >= s.renew_deadline or self._held_by_other():
                self._became(False)
                raise LeadershipLost(f"lease {s.namespace}/{s.lease_name} lost by {s.identity}")

    async def release(self) -> None:
        if not self.is_leader:
            return
        s = self.settings
        try:
            lease = await self.client.get(LEASE, s.lease_name, s.namespace)
            if lease.get("spec", {}).get("holderIdentity") == s.identity:
                now = _micro_time(datetime.now(UTC))
                lease["spec"].update(
                    {"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": now, "acquireTime": now}
                )
                await self.client.update(LEASE, lease)
        except RuntimeLibraryError as exc:
            log.warning("could not release lease", extra={"lease": s.lease_name, "error": str(exc)})
        self._became(False)

    def _became(self, leader: bool) -> None:
        if leader != self.is_leader:
            log.info(
                "leadership changed",
                extra={
                    "lease": self.settings.lease_name,
                    "identity": self.settings.identity,
                    "leader": leader,
                },
            )
        self.is_leader = leader
        self._gauge.set(1 if leader else 0)

    def _held_by_other(self) -> bool:
        holder = (self._observed or {}).get("holderIdentity")
        return bool(holder) and holder != self.settings.identity

    async def _try_acquire_or_renew(self) -> bool:
        s = self.settings
        now_dt = datetime.now(UTC)
        ours = {
            "holderIdentity": s.identity,
            "leaseDurationSeconds": int(s.lease_duration),
            "acquireTime": _micro_time(now_dt),
            "renewTime": _micro_time(now_dt),
            "leaseTransitions": 0,
        }
        try:
            lease = await self.client.get(LEASE, s.lease_name, s.namespace)
        except NotFound:
            try:
                created = await self.client.create(
                    LEASE,
                    {
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {"name": s.lease_name, "namespace": s.namespace},
                        "spec": ours,
                    },
                )
            except ApiError:
                return False
            self._observe(created)
            return True
        except RuntimeLibraryError:
            return False
        spec = lease.get("spec") or {}
        rv = lease["metadata"]["resourceVersion"]
        if rv != self._observed_rv:
            self._observe(lease)
        holder = spec.get("holderIdentity")
        duration = float(spec.get("leaseDurationSeconds") or s.lease_duration)
        if holder and holder != s.identity and self._clock.now() < self._observed_at + duration:
            return False  # someone else holds a live lease
        if holder == s.identity:
            ours["acquireTime"] = spec.get("acquireTime") or ours["acquireTime"]
            ours["leaseTransitions"] = spec.get("leaseTransitions") or 0
        else:
            ours["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        lease["spec"] = ours
        try:
            updated = await self.client.update(LEASE, lease)
        except RuntimeLibraryError:
            return False
        self._observe(updated)
        return True

    def _observe(self, lease: dict[str, Any]) -> None:
        self._observed = lease.get("spec") or {}
        self._observed_rv = lease["metadata"]["resourceVersion"]
        self._observed_at = self._clock.now()
