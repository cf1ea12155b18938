"""The bad-input scenario's inputs: a deterministic list of Workspace bodies per seed, drawn from
the hypothesis strategies in tests.chaos.strategies (about a third valid, the rest mutated).

Hypothesis is driven as a generator here, not as a test runner: a `@given` collector with a fixed
`@seed`, no example database and only the generate phase (no shrinking, no replay) sees the same
sequence of examples on every run, so a seed names one list of bodies.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.chaos.strategies import workspaces

Body = dict[str, Any]


def workspace_bodies(
    seed_value: int, count: int, namespace: str, *, prefix: str = "fuzz", max_nodes: int | None = 2
) -> list[Body]:
    """`count` bodies named `<prefix>-<i>` in `namespace`; the same arguments give the same list.
    `max_nodes` bounds the nodes a valid body may ask for (keeps a run against a cluster small)."""
    drawn: list[Body] = []

    @seed(seed_value)
    @settings(
        max_examples=count,
        database=None,
        derandomize=False,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(workspaces(max_nodes))
    def collect(body: Body) -> None:
        drawn.append(copy.deepcopy(body))

    collect()
    out = []
    for i, body in enumerate(drawn[:count]):
        body["metadata"] = {"name": f"{prefix}-{i}", "namespace": namespace}
        out.append(body)
    return out
