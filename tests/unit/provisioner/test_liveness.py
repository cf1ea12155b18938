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
    ("deletion", "grace_period", "seen_s", "stuck"),
    [
        (None, None, None, False),  # not being deleted: a drain evicts it
        ("2026-12-04T12:00:00Z", "30", 91.0, True),  # seen deleting past its grace and the minute
        ("2026-12-04T12:00:00Z", "30", 89.0, False),  # still within them
        ("2026-12-04T12:00:00Z", None, 61.0, True),
        # The API server's clock an hour behind ours: a pod deleted a second ago is not stuck...
        ("2026-12-04T11:00:00Z", "30", 1.0, False),
        # ...and an hour ahead: a pod seen deleting for five minutes is, whatever the timestamp says.
        ("2026-12-04T13:00:00Z", "30", 300.0, True),
    ],
)
def test_a_drain_stops_waiting_for_a_pod_stuck_past_its_deletion(
    deletion: str | None, grace_period: str | None, seen_s: float | None, stuck: bool
) -> None:
    pod: dict[str, Any] = {"metadata": {"name": "p", "uid": "u1"}}
    if deletion:
        pod["metadata"]["deletionTimestamp"] = deletion
    if grace_period:
        pod["metadata"]["deletionGracePeriodSeconds"] = int(grace_period)
    seen = {} if seen_s is None else {"u1": seen_s}
    assert _stuck(pod, seen, 60.0) is stuck


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


# -- node repair: NotReady while the instance runs --------------------------------------------


def initialized(name: str, deleting: bool = False) -> dict[str, Any]:
    # The claim's own Initialized condition follows the node's readiness (it is Unknown on an
    # unhealthy node); what stays is the node's karpenter.sh/initialized label.
    c = claim(name, deleting=deleting)
    c["status"]["conditions"].append({"type": "Initialized", "status": "Unknown"})
    return c


def node(claim_name: str, ready: str | None, message: str = "", initialized: bool = True) -> dict[str, Any]:
    conditions = [] if ready is None else [{"type": "Ready", "status": ready, "message": message}]
    labels = {"kaito.sh/nodeclaim": claim_name}
    if initialized:
        labels["karpenter.sh/initialized"] = "true"
    return {
        "metadata": {"name": f"node-{claim_name}", "labels": labels},
        "status": {"conditions": conditions},
    }


def test_node_unready_says_why() -> None:
    from kaitopy.provisioner.liveness import node_unready

    assert node_unready(node("a", "True")) is None
    assert node_unready(node("a", None)) is None  # has not reported yet: not unhealthy
    assert node_unready(node("a", "Unknown", "Kubelet stopped posting node status.")) == (
        "Ready=Unknown: Kubelet stopped posting node status."
    )
    assert node_unready(node("a", "False")) == "Ready=False"


def test_the_unhealthy_clock_starts_at_first_sight_and_forgets_healthy_nodes() -> None:
    from kaitopy.provisioner.liveness import track_unhealthy

    assert track_unhealthy({}, ["a"], 100.0) == {"a": 100.0}
    assert track_unhealthy({"a": 100.0}, ["a", "b"], 130.0) == {"a": 100.0, "b": 130.0}
    # b recovered: its next bad spell starts from zero
    assert track_unhealthy({"a": 100.0, "b": 130.0}, ["a"], 160.0) == {"a": 100.0}


@pytest.mark.parametrize(("launched", "budget"), [(1, 1), (4, 1), (5, 1), (6, 2), (10, 2), (11, 3)])
def test_repair_budget_is_a_fifth_rounded_up_and_at_least_one(launched: int, budget: int) -> None:
    from kaitopy.provisioner.liveness import repair_budget

    assert repair_budget(launched, 0.2) == budget


@pytest.mark.parametrize(
    ("claims", "nodes", "since", "due", "held"),
    [
        # NotReady for longer than the toleration: replaced, with the node's own words
        ([initialized("a")], [node("a", "Unknown", "Kubelet stopped posting node status.")], {"a": 0.0},
         {"a": "node node-a has been NotReady (Ready=Unknown: Kubelet stopped posting node status.) "
               "for 700 s while its instance still runs"}, False),
        # not long enough yet, or first seen just now
        ([initialized("a")], [node("a", "False")], {"a": 200.0}, {}, False),
        ([initialized("a")], [node("a", "False")], {}, {}, False),
        # Ready again: nothing, whatever the clock said
        ([initialized("a")], [node("a", "True")], {"a": 0.0}, {}, False),
        # never initialized (still joining: the lifecycle's registration timeout), deleting, no node
        ([claim("a")], [node("a", "False", initialized=False)], {"a": 0.0}, {}, False),
        ([initialized("a", deleting=True)], [node("a", "False")], {"a": 0.0}, {}, False),
        ([initialized("a")], [], {"a": 0.0}, {}, False),
        # 2 of 6 unhealthy: the budget (2) allows both
        ([initialized(n) for n in "abcdef"], [node("a", "False"), node("b", "False")]
         + [node(n, "True") for n in "cdef"], {"a": 0.0, "b": 0.0}, {"a": ..., "b": ...}, False),
        # 2 of 5 unhealthy: over the budget (1), so none is repaired and the hold is reported
        ([initialized(n) for n in "abcde"], [node("a", "False"), node("b", "False")]
         + [node(n, "True") for n in "cde"], {"a": 0.0, "b": 0.0}, {}, True),
    ],
)  # fmt: skip
def test_decide_repairs(
    claims: list[dict[str, Any]],
    nodes: list[dict[str, Any]],
    since: dict[str, float],
    due: dict[str, Any],
    held: bool,
) -> None:
    from kaitopy.api.nodeclaim import NODE_UNHEALTHY
    from kaitopy.provisioner.liveness import decide_repairs, nodes_by_claim

    plan = decide_repairs(claims, nodes_by_claim(nodes), since, 700.0, 600.0, 0.2)
    got = {str(x.claim["metadata"]["name"]): x.why for x in plan.due}
    assert set(got) == set(due)
    for name, why in due.items():
        if why is not ...:
            assert got[name] == why
    assert all(x.reason == NODE_UNHEALTHY for x in plan.due)
    assert plan.held is held
    unhealthy = {
        str(n["metadata"]["labels"]["kaito.sh/nodeclaim"])
        for n in nodes
        if n["status"]["conditions"]
        and n["status"]["conditions"][0]["status"] != "True"
        and "karpenter.sh/initialized" in n["metadata"]["labels"]
    }
    live = {str(c["metadata"]["name"]) for c in claims if "deletionTimestamp" not in c["metadata"]}
    assert set(plan.since) == unhealthy & live


def test_a_given_up_claim_skips_the_drain() -> None:
    from kaitopy.provisioner.liveness import is_repaired

    c = initialized("a")
    assert not is_repaired(c)
    c["status"]["conditions"].append({"type": "Ready", "status": "False", "reason": "NodeUnhealthy"})
    assert is_repaired(c)
    c["status"]["conditions"][-1]["reason"] = "InstanceLost"
    assert is_repaired(c)
    c["status"]["conditions"][-1]["reason"] = "NotInitialized"
    assert not is_repaired(c)


async def test_a_claim_launched_while_the_instances_are_listed_is_not_lost() -> None:
    # At 1,000 claims the instance list takes seconds; a claim that launched meanwhile (its
    # instance made after the list was read) was judged against that list and deleted as lost.
    from kaitopy.provisioner.liveness import LivenessChecker
    from kaitopy.provisioner.settings import ProvisionerSettings
    from kaitopy.runtime.cache.store import Store

    store = Store()
    store.upsert(claim("old"))

    class Claims:
        def __init__(self) -> None:
            self.store = store

        async def wait_synced(self) -> None:
            return None

    class Provider:
        name = "kwok"

        async def list(self) -> list[Instance]:
            instances = [instance("old")]  # read first...
            store.upsert(claim("new"))  # ...then a claim launches, its instance made after the read
            return instances

    checker = LivenessChecker(None, Provider(), Claims(), None, ProvisionerSettings())  # type: ignore[arg-type]
    assert await checker.check_once() == []
