"""Rolling or Recreate: a second copy of the model must fit on a node, or the old pod must go first."""

from __future__ import annotations

from typing import Any

import pytest

from kaitopy.controllers.workspace import rollout
from kaitopy.runtime.quantity import parse_quantity

pytestmark = pytest.mark.unit


def node(name: str, **allocatable: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"allocatable": allocatable}}


def template(*containers: dict[str, Any], init: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    return {"spec": {"containers": list(containers), "initContainers": list(init)}}


def asks(requests: dict[str, str] | None = None, limits: dict[str, str] | None = None) -> dict[str, Any]:
    return {"resources": {"requests": requests or {}, "limits": limits or {}}}


CPU_MODEL = template(asks({"cpu": "1", "memory": "1280Mi"}, {"cpu": "2", "memory": "2560Mi"}))
GPU_MODEL = template(asks(limits={"nvidia.com/gpu": "1"}))

CASES = [
    ("CPU model, 2 cores", CPU_MODEL, [node("n", cpu="2", memory="23Gi")], True, "node n has room"),
    (
        "CPU model, 1 core",
        CPU_MODEL,
        [node("n", cpu="1500m", memory="23Gi")],
        False,
        "cpu: a copy needs 1, node n has 1.5",
    ),
    ("one GPU, one per copy", GPU_MODEL, [node("n", **{"nvidia.com/gpu": "1"})], False, "nvidia.com/gpu"),
    (
        "four GPUs",
        GPU_MODEL,
        [node("a", **{"nvidia.com/gpu": "1"}), node("b", **{"nvidia.com/gpu": "4"})],
        True,
        "node b",
    ),
    ("no requests at all", template({}), [node("n")], True, "room"),
    ("no node known", CPU_MODEL, [], False, "no node"),
    (
        "an init container's larger ask counts",
        template(asks({"memory": "1Gi"}), init=(asks({"memory": "8Gi"}),)),
        [node("n", memory="12Gi")],
        False,
        "memory",
    ),
]


@pytest.mark.parametrize(
    ("tpl", "nodes", "rolling", "why"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rolling_only_with_room_for_a_second_copy(
    tpl: dict[str, Any], nodes: list[dict[str, Any]], rolling: bool, why: str
) -> None:
    got = rollout.decide(tpl, nodes)
    assert got.rolling == rolling
    assert why in got.why
    if rolling:
        assert got.strategy == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        }
    else:
        assert got.strategy == {"type": "Recreate"}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", 0.5),
        ("2", 2.0),
        ("1280Mi", 1280 * 2**20),
        ("1G", 1e9),
        ("1e3", 1000.0),
        ("1.5Gi", 1.5 * 2**30),
        (3, 3.0),
    ],
)
def test_quantities(text: str | int, value: float) -> None:
    assert parse_quantity(text) == pytest.approx(value)


def test_a_bad_quantity_is_refused() -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity("12 bananas")
