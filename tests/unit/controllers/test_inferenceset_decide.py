"""The InferenceSet's pure parts: which members to create and delete, the update strategy, the node
limit, the expectations that keep a lagging cache from making extra members, and member shapes."""

from __future__ import annotations

from typing import Any

import pytest

from kaitopy.controllers.inferenceset import members as mb
from kaitopy.controllers.inferenceset.decide import Inputs, allowed_members, decide, max_unavailable_of
from kaitopy.controllers.inferenceset.expectations import Expectations
from kaitopy.controllers.inferenceset.members import Member

pytestmark = pytest.mark.unit


def m(
    name: str, *, ready: bool = True, deleting: bool = False, current: bool = True, nodes: int = 1
) -> Member:
    return Member(name, ready=ready, deleting=deleting, current=current, nodes=nodes)


def inputs(
    replicas: int,
    *members: Member,
    limit: int = 0,
    rolling: bool = True,
    mu: int = 1,
    taken: frozenset[str] = frozenset(),
) -> Inputs:
    return Inputs("s", replicas, limit, rolling, mu, tuple(members), taken)


# (case, inputs, create, delete)
CASES: list[tuple[str, Inputs, tuple[str, ...], tuple[str, ...]]] = [
    ("empty set creates from index 0", inputs(2), ("s-0", "s-1"), ()),
    ("steady state does nothing", inputs(2, m("s-0"), m("s-1")), (), ()),
    ("fills the lowest free indexes", inputs(3, m("s-1")), ("s-0", "s-2"), ()),
    ("a deleting member's name is not reused", inputs(1, m("s-0", deleting=True)), ("s-1",), ()),
    ("another workspace's name is skipped", inputs(1, taken=frozenset({"s-0"})), ("s-1",), ()),
    (
        "scale down deletes not-ready members first",
        inputs(1, m("s-0", ready=False), m("s-1"), m("s-2", ready=False)),
        (),
        ("s-2", "s-0"),
    ),
    (
        "scale down among ready ones takes the newest",
        inputs(1, m("s-0"), m("s-1"), m("s-2")),
        (),
        ("s-2", "s-1"),
    ),
    ("scale to zero deletes all", inputs(0, m("s-0"), m("s-1")), (), ("s-1", "s-0")),
    (
        "deleting members are not counted as active",
        inputs(2, m("s-0"), m("s-1", deleting=True)),
        ("s-2",),
        (),
    ),
    ("node limit caps creation", inputs(5, m("s-0", nodes=2), limit=5), ("s-1",), ()),
    ("node limit forces deletion", inputs(3, m("s-0", nodes=2), m("s-1", nodes=2), limit=2), (), ("s-1",)),
    (
        "rolling update replaces one ready outdated member at a time",
        inputs(3, m("s-0", current=False), m("s-1", current=False), m("s-2")),
        (),
        ("s-1",),
    ),
    (
        "rolling update waits while the set is short of ready members",
        inputs(2, m("s-0", current=False), m("s-1", ready=False)),
        (),
        (),
    ),
    (
        "outdated members that are not ready are replaced at once",
        inputs(2, m("s-0", current=False, ready=False), m("s-1", current=False, ready=False)),
        (),
        ("s-0", "s-1"),
    ),
    (
        "maxUnavailable 2 replaces two",
        inputs(2, m("s-0", current=False), m("s-1", current=False), mu=2),
        (),
        ("s-1", "s-0"),
    ),
    ("OnDelete leaves outdated members", inputs(1, m("s-0", current=False), rolling=False), (), ()),
]


@pytest.mark.parametrize(("case", "given", "create", "delete"), CASES, ids=[c[0] for c in CASES])
def test_decide(case: str, given: Inputs, create: tuple[str, ...], delete: tuple[str, ...]) -> None:
    got = decide(given)
    assert got.create == create
    assert got.delete == delete


def test_status_counts_and_limit() -> None:
    got = decide(
        inputs(4, m("s-0", nodes=2), m("s-1", ready=False, nodes=2), m("s-2", deleting=True), limit=4)
    )
    assert (got.replicas, got.ready_replicas, got.wanted, got.allowed, got.limited) == (2, 1, 4, 2, True)
    assert not decide(inputs(1, m("s-0"))).limited


@pytest.mark.parametrize(
    ("strategy", "replicas", "expected"),
    [
        (None, 4, (True, 1)),
        ({"type": "OnDelete"}, 4, (False, 1)),
        ({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 3}}, 4, (True, 3)),
        ({"rollingUpdate": {"maxUnavailable": "50%"}}, 4, (True, 2)),
        ({"rollingUpdate": {"maxUnavailable": "10%"}}, 4, (True, 1)),
    ],
)
def test_update_strategy(strategy: dict[str, Any] | None, replicas: int, expected: tuple[bool, int]) -> None:
    assert max_unavailable_of(strategy, replicas) == expected


def test_allowed_members_without_limit_is_replicas() -> None:
    assert allowed_members(7, 0, [m("s-0", nodes=4)]) == 7


def test_expectations_hold_until_the_cache_shows_the_creates() -> None:
    exp = Expectations(timeout_s=10)
    exp.expect("ns/s", adds=["s-0", "s-1"], now=0)
    assert not exp.satisfied("ns/s", present=set(), deleting=set(), now=1)
    assert not exp.satisfied("ns/s", present={"s-0"}, deleting=set(), now=2)
    assert exp.satisfied("ns/s", present={"s-0", "s-1"}, deleting=set(), now=3)
    assert exp.satisfied("ns/other", present=set(), deleting=set(), now=3)


def test_expectations_for_deletes_accept_gone_or_deleting() -> None:
    exp = Expectations(timeout_s=10)
    exp.expect("ns/s", deletes=["s-1", "s-2"], now=0)
    assert not exp.satisfied("ns/s", present={"s-1", "s-2"}, deleting=set(), now=1)
    assert exp.satisfied("ns/s", present={"s-1"}, deleting={"s-1"}, now=2)


def test_expectations_expire_and_failures_lower_them() -> None:
    exp = Expectations(timeout_s=10)
    exp.expect("ns/s", adds=["s-0"], now=0)
    assert not exp.satisfied("ns/s", present=set(), deleting=set(), now=5)
    assert exp.satisfied("ns/s", present=set(), deleting=set(), now=11)
    exp.expect("ns/s", adds=["s-0"], now=20)
    exp.observed_failure("ns/s", "s-0")
    assert exp.satisfied("ns/s", present=set(), deleting=set(), now=21)


SET: dict[str, Any] = {
    "apiVersion": "kaito.sh/v1beta1",
    "kind": "InferenceSet",
    "metadata": {"name": "s", "namespace": "ns", "uid": "u1"},
    "spec": {
        "replicas": 2,
        "labelSelector": {"matchLabels": {"apps": "s"}},
        "template": {
            "metadata": {"labels": {"team": "a"}},
            "resource": {"instanceType": "Standard_NC6s_v3"},
            "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
        },
    },
}


def test_desired_member_carries_template_selector_and_hash() -> None:
    ws = mb.desired_member(SET, "s-0")
    assert ws["resource"] == {
        "labelSelector": {"matchLabels": {"apps": "s"}},
        "instanceType": "Standard_NC6s_v3",
    }
    assert ws["inference"] == {"preset": {"name": "phi-3-mini-4k-instruct"}}
    assert ws["metadata"]["labels"] == {"team": "a", mb.SET_LABEL: "s"}
    assert ws["metadata"]["annotations"][mb.TEMPLATE_HASH] == mb.template_hash(SET["spec"])


def test_template_hash_ignores_replicas_but_not_the_template() -> None:
    base = mb.template_hash(SET["spec"])
    assert mb.template_hash({**SET["spec"], "replicas": 9}) == base
    changed = {**SET["spec"], "template": {**SET["spec"]["template"], "resource": {"instanceType": "x"}}}
    assert mb.template_hash(changed) != base


def test_observe_reads_readiness_nodes_and_revision() -> None:
    ws = mb.desired_member(SET, "s-0")
    ws["status"] = {"targetNodeCount": 2, "conditions": [{"type": "InferenceReady", "status": "True"}]}
    seen = mb.observe(ws, mb.template_hash(SET["spec"]))
    assert seen == Member("s-0", ready=True, deleting=False, current=True, nodes=2)
    assert not mb.observe(ws, "other").current


def test_pod_selector() -> None:
    assert mb.pod_selector(["s-1", "s-0"], "s") == "kaito.sh/workspace in (s-0,s-1)"
    assert mb.pod_selector([], "s") == "kaito.sh/inferenceset=s"


def test_template_hash_is_the_same_for_a_frozen_cache_copy() -> None:
    from kaitopy.runtime import freeze

    assert mb.template_hash(freeze(SET)["spec"]) == mb.template_hash(SET["spec"])


@pytest.mark.parametrize(
    "strategy",
    [
        {"type": "Recreate"},
        {"rollingUpdate": {"maxUnavailable": "many"}},
        {"rollingUpdate": {"maxUnavailable": "x%"}},
        {"rollingUpdate": "1"},
    ],
)
def test_a_bad_update_strategy_is_named(strategy: dict[str, Any]) -> None:
    from kaitopy.controllers.inferenceset.reconciler import unsupported

    problem = unsupported({**SET["spec"], "updateStrategy": strategy})
    assert problem is not None and problem.startswith(
        "spec.updateStrategy: type must be RollingUpdate or OnDelete"
    )
    assert unsupported({**SET["spec"], "updateStrategy": {"type": "OnDelete"}}) is None
