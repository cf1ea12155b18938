"""Random Workspace objects for the bad-input scenario: a valid one from the examples, then a few
seeded mutations (wrong types, unknown names, missing or extra fields, hostile strings)."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ODD_VALUES: list[Any] = [
    None,
    "",
    0,
    -1,
    10**12,
    1.5,
    True,
    [],
    {},
    "x" * 5000,
    "phi-3-mini-4k-instruct",
    "Standard_NC6s_v3",
    "http://169.254.169.254/latest/meta-data",
    "../../etc/passwd",
    "\u0000\u202e",
    {"nested": {"deep": [1, 2, {"x": None}]}},
]


def _examples() -> list[dict[str, Any]]:
    out = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Workspace":
                out.append(doc)
    return out


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += _paths(v, (*prefix, i))
    return found


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


def _delete(obj: Any, path: tuple[Any, ...]) -> None:
    for key in path[:-1]:
        obj = obj[key]
    del obj[path[-1]]


def random_workspace(rng: random.Random, name: str, namespace: str) -> dict[str, Any]:
    base = copy.deepcopy(rng.choice(_examples()))
    base["metadata"] = {"name": name, "namespace": namespace}
    body = {k: v for k, v in base.items() if k != "status"}
    for _ in range(rng.randint(0, 3)):
        paths = [p for p in _paths(body) if p[0] not in ("apiVersion", "kind", "metadata")]
        if not paths:
            break
        path = rng.choice(paths)
        action = rng.random()
        try:
            if action < 0.5:
                _set(body, path, rng.choice(ODD_VALUES))
            elif action < 0.8:
                _delete(body, path)
            else:
                parent = body
                for key in path[:-1]:
                    parent = parent[key]
                if isinstance(parent, dict):
                    parent[f"unknown{rng.randint(0, 9)}"] = rng.choice(ODD_VALUES)
        except (KeyError, IndexError, TypeError):
            continue
    return body
