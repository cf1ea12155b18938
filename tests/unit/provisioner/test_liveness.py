"""Node loss, decided: which launched claims have lost their instance, and which pods a drain
stops waiting for."""

from __future__ import annotations

from typing import Any

import pytest

from kaitopy.provisioner.cloudprovider import Instance
from kaitopy.provisioner.lifecycle import _stuck
from kaitopy.provisioner.liveness import lost_claims
from kaitopy.provisioner.nodeclaim import NODECLASS_GROUP, NODECLASS_KIND

pytestmark = pytest.mark.unit


def claim(
    name: str, launched: str | None = "True", deleting: bool = False, ours: bool = True
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-04T12:00:00Z"
    conditions = [] if launched is None else [{"type": "Launched", "status": launched}]
    ref = (
        {"group": NODECLASS_GROUP, "kind": NODECLASS_KIND, "name": "x"}
        if ours
        else {"group": "other", "kind": "X"}
    )
    return {"metadata": meta, "spec": {"nodeClassRef": ref}, "status": {"conditions": conditions}}


def instance(name: str, state: str = "running", message: str = "") -> Instance:
    return Instance(
        name=name, instance_type="Standard_NC6s_v3", state=state, claim_name=name, message=message
    )


@pytest.mark.parametrize(
    ("claims", "instances", "lost"),
    [
        # healthy: nothing to do
        ([claim("a")], [instance("a")], {}),
        # the instance vanished under a launched claim
        ([claim("a")], [], {"a": "its instance no longer exists at local"}),
        # the provider reports it failed, in its own words
        ([claim("a")], [instance("a", "failed", "kubelet (killed) of local node a stopped")],
         {"a": "kubelet (killed) of local node a stopped"}),
        ([claim("a")], [instance("a", "failed")], {"a": "local reports its instance a failed"}),
        # still launching, or its launch failed: the lifecycle's business, not node loss
        ([claim("a", launched="Unknown")], [], {}),
        ([claim("a", launched=None)], [], {}),
        ([claim("a", launched="False")], [], {}),
        # already being deleted, or not ours
        ([claim("a", deleting=True)], [], {}),
        ([claim("a", ours=False)], [], {}),
        # creating/deleting instances are not failures
        ([claim("a"), claim("b")], [instance("a", "creating"), instance("b", "deleting")], {}),
    ],
)  # fmt: skip
def test_lost_claims(claims: list[dict[str, Any]], instances: list[Instance], lost: dict[str, str]) -> None:
    got = {str(x.claim["metadata"]["name"]): x.why for x in lost_claims(claims, instances, "local")}
    assert got == lost


@pytest.mark.parametrize(
    ("deletion", "stuck"),
    [
        (None, False),  # not being deleted: a drain evicts it
        ("2026-12-04T12:00:00Z", True),  # its deletion time passed before the cut-off
        ("2026-12-04T12:02:00Z", False),  # still within its grace
    ],
)
def test_a_drain_stops_waiting_for_a_pod_stuck_past_its_deletion(deletion: str | None, stuck: bool) -> None:
    from datetime import UTC, datetime

    pod: dict[str, Any] = {"metadata": {"name": "p"}}
    if deletion:
        pod["metadata"]["deletionTimestamp"] = deletion
    cutoff = datetime(2026, 12, 4, 12, 1, tzinfo=UTC).timestamp()
    assert _stuck(pod, cutoff) is stuck


async def test_a_failing_pass_does_not_end_the_loop() -> None:
    # A liveness or GC pass that meets an API server restart must not stop the manager: before
    # this, the provisioner shut down when its 30 s liveness list met a restarting API server
    # (tests/e2e/test_chaos.py's restart-apiserver scenario).
    import asyncio

    from kaitopy.provisioner.periodic import every

    calls: list[int] = []
    fourth = asyncio.Event()

    async def one_pass() -> None:
        calls.append(len(calls))
        if len(calls) == 4:
            fourth.set()
        if len(calls) < 3:
            raise ConnectionRefusedError("the API server is restarting")

    task = asyncio.create_task(every(0.01, one_pass, "test"))
    await asyncio.wait_for(fourth.wait(), 10)
    task.cancel()
    assert len(calls) >= 4
