"""decide_claims over what the caches hold: a table of cases, no cluster."""

from __future__ import annotations

from typing import Any

import pytest

from kaitopy.controllers.workspace.claims import decide_claims
from kaitopy.controllers.workspace.nodes import nodeclaim_name

UID = "0f5e1d4c-0000-4000-8000-000000000001"
SLOT = [nodeclaim_name(UID, i) for i in range(3)]


def claim(slot: int, node: str | None = None, *, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": SLOT[slot]}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"nodeName": node} if node else {}}


CASES = {
    # name: (node_count, claims, ready nodes {name: nodeclaim label}, create, delete, wanted)
    "nothing yet: claim every slot": (2, [], {}, (0, 1), (), 2),
    "a pre-existing node counts first": (2, [], {"byo": ""}, (0,), (), 1),
    "claims made: nothing to do": (1, [claim(0, "n0")], {"n0": SLOT[0]}, (), (), 1),
    # The pre-existing node was NotReady (or cordoned), so slot 0 was claimed; it is back.
    "a returned node makes its stand-in surplus": (
        1,
        [claim(0, "n0")],
        {"byo": "", "n0": SLOT[0]},
        (),
        (SLOT[0],),
        0,
    ),
    "only the slots beyond the shortfall go": (
        2,
        [claim(0, "n0"), claim(1, "n1")],
        {"byo": "", "n0": SLOT[0], "n1": SLOT[1]},
        (),
        (SLOT[1],),
        1,
    ),
    # The claim's status has no nodeName yet in the cache, but its node carries the claim's name.
    "an own node with a lagging claim status is not foreign": (1, [claim(0)], {"n0": SLOT[0]}, (), (), 1),
    # ...and a node of a slot whose claim the cache has not seen yet.
    "an own node whose claim is not cached yet is not foreign": (1, [], {"n0": SLOT[0]}, (0,), (), 1),
    "a claim already being deleted is not deleted again": (
        1,
        [claim(0, "n0"), claim(1, deleting=True)],
        {"n0": SLOT[0]},
        (),
        (),
        1,
    ),
    "fewer nodes wanted: the extra slot goes": (
        1,
        [claim(0, "n0"), claim(1, "n1")],
        {"n0": SLOT[0], "n1": SLOT[1]},
        (),
        (SLOT[1],),
        1,
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_decide_claims(case: str) -> None:
    node_count, claims, nodes, create, delete, wanted = CASES[case]
    d = decide_claims(
        workspace_uid=UID,
        node_count=node_count,
        claims=claims,
        ready_nodes=sorted(nodes),
        node_labels={n: ({"kaito.sh/nodeclaim": label} if label else {}) for n, label in nodes.items()},
    )
    assert (d.create, d.delete, d.wanted) == (create, delete, wanted)
    assert {c["metadata"]["name"] for c in d.mine} == {SLOT[i] for i in range(wanted) if i < len(claims)} & {
        c["metadata"]["name"] for c in claims
    }
