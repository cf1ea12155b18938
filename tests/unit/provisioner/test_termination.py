"""A NodeClaim's termination decision over plain observed data: every case of the drain, the
instance and the Node, with no API server and no provider."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kaitopy.provisioner.termination import (
    PodOnNode,
    TerminationDecision,
    TerminationObserved,
    decide_termination,
    drain_possible,
)

pytestmark = pytest.mark.unit

LIVE = TerminationObserved(
    has_finalizer=True,
    node="n1",
    node_unschedulable=True,
    recorded_node="n1",
    instance="i1",
    instance_state="running",
    repaired=False,
    provider="kwok",
    pods=(),
)


def pod(
    name: str, *, needs: bool = True, deleting: bool = False, for_s: float = 0.0, grace_s: float = 30.0
) -> PodOnNode:
    grace = grace_s if deleting else 0.0
    return PodOnNode(f"ns/{name}", needs, deleting, deleting_for_s=for_s, grace_s=grace)


DRAINING = ("Unknown", "Draining", "evicting pods from node n1")
DELETING = ("True", "InstanceTerminating", "waiting for kwok to delete i1")
GONE = TerminationDecision(delete_node="n1", release_pods_of="n1", remove_finalizer=True)

CASES = [
    ("no finalizer: nothing left to do", replace(LIVE, has_finalizer=False), TerminationDecision()),
    (
        "a schedulable node is cordoned first, its pods evicted",
        replace(LIVE, node_unschedulable=False, pods=(pod("a"), pod("b"))),
        TerminationDecision(cordon="n1", evict=("ns/a", "ns/b"), condition=DRAINING, requeue=True),
    ),
    (
        "a pod already deleting is waited for, not evicted again",
        replace(LIVE, pods=(pod("a", deleting=True), pod("b"))),
        TerminationDecision(evict=("ns/b",), condition=DRAINING, requeue=True),
    ),
    (
        "only deleting pods left: still draining, nothing to evict",
        replace(LIVE, pods=(pod("a", deleting=True),)),
        TerminationDecision(condition=DRAINING, requeue=True),
    ),
    (
        "daemonset, mirror and finished pods do not hold the drain",
        replace(LIVE, pods=(pod("ds", needs=False), pod("done", needs=False))),
        TerminationDecision(begin_delete=True, condition=DELETING, requeue=True),
    ),
    (
        "a pod stuck deleting past its grace plus the stuck-pod grace does not hold the drain",
        replace(LIVE, pods=(pod("a", deleting=True, for_s=90.1),)),
        TerminationDecision(begin_delete=True, condition=DELETING, requeue=True),
    ),
    (
        "a pod deleting within its grace plus the stuck-pod grace still holds the drain",
        replace(LIVE, pods=(pod("a", deleting=True, for_s=90.0),)),
        TerminationDecision(condition=DRAINING, requeue=True),
    ),
    (
        "the stuck-pod grace is the provisioner's setting",
        replace(LIVE, stuck_pod_grace_s=5.0, pods=(pod("a", deleting=True, for_s=35.1),)),
        TerminationDecision(begin_delete=True, condition=DELETING, requeue=True),
    ),
    (
        "a long wait on a pod that is not deleting is no reason to skip it",
        replace(LIVE, pods=(pod("a", for_s=1e6),)),
        TerminationDecision(evict=("ns/a",), condition=DRAINING, requeue=True),
    ),
    (
        "drained in this pass: cordon and begin the instance's deletion together",
        replace(LIVE, node_unschedulable=False),
        TerminationDecision(cordon="n1", begin_delete=True, condition=DELETING, requeue=True),
    ),
    (
        "the instance is being deleted: wait, do not ask again",
        replace(LIVE, instance_state="deleting"),
        TerminationDecision(condition=DELETING, requeue=True),
    ),
    (
        "a failed instance is not drained: delete it",
        replace(LIVE, instance_state="failed", node_unschedulable=False, pods=None),
        TerminationDecision(begin_delete=True, condition=DELETING, requeue=True),
    ),
    (
        "a node given up as unhealthy is not drained",
        replace(LIVE, repaired=True, pods=None),
        TerminationDecision(begin_delete=True, condition=DELETING, requeue=True),
    ),
    (
        "instance gone: delete the Node, release its pods, let the claim go",
        replace(LIVE, instance=None, instance_state=None, pods=None),
        GONE,
    ),
    (
        "instance and Node gone: the recorded Node's pods are released",
        replace(LIVE, instance=None, instance_state=None, node=None, pods=None),
        TerminationDecision(release_pods_of="n1", remove_finalizer=True),
    ),
    (
        "never registered: nothing to release",
        replace(LIVE, instance=None, instance_state=None, node=None, recorded_node=None, pods=None),
        TerminationDecision(remove_finalizer=True),
    ),
    (
        "no Node yet, instance running: straight to the instance",
        replace(LIVE, node=None, pods=None),
        TerminationDecision(begin_delete=True, condition=DELETING, requeue=True),
    ),
]


@pytest.mark.parametrize(("case", "observed", "decision"), CASES, ids=[c[0] for c in CASES])
def test_decide_termination(case: str, observed: TerminationObserved, decision: TerminationDecision) -> None:
    assert decide_termination(observed) == decision


@pytest.mark.parametrize(
    ("observed", "possible"),
    [
        (LIVE, True),
        (replace(LIVE, node=None), False),
        (replace(LIVE, instance=None), False),
        (replace(LIVE, instance_state="failed"), False),
        (replace(LIVE, repaired=True), False),
        (replace(LIVE, has_finalizer=False), False),
    ],
)
def test_pods_are_listed_only_where_a_drain_is_possible(
    observed: TerminationObserved, possible: bool
) -> None:
    assert drain_possible(observed) is possible
