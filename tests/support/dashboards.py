"""The Grafana dashboards of manifests/observability/, their panels' PromQL with the dashboard
variables replaced as Grafana would with every value selected."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARDS = Path(__file__).resolve().parents[2] / "manifests" / "observability"
# Served only by a model server (vLLM's own families, kaitopy's inference server): on kwok nodes
# no model runs, so these panels are only checked to parse; tests/e2e/test_local_model.py is where
# a real server feeds them.
MODEL_SERVER_METRICS = re.compile(r"\b(vllm:[a-z_:]+|kaitopy_inference_[a-z_]+)")
# "All" of a multi-value variable is a regex matching every value; the rate window spans the
# workload the test ran (Grafana's $__rate_interval would be 4 scrape intervals).
VARIABLES = {"job": ".*", "controller": ".*", "__rate_interval": "1m", "__range": "1h", "namespace": ".*"}


@dataclass(frozen=True)
class Panel:
    dashboard: str
    title: str
    queries: tuple[str, ...]

    @property
    def needs_model_server(self) -> bool:
        return any(MODEL_SERVER_METRICS.search(q) for q in self.queries)


def substitute(expr: str, variables: dict[str, str] = VARIABLES) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise ValueError(f"dashboard variable ${name} has no test value: add it to VARIABLES")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


def _walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _walk(p.get("panels") or [])


def load(path: Path) -> list[Panel]:
    board = json.loads(path.read_text())
    out = []
    for p in _walk(board.get("panels") or []):
        exprs = tuple(substitute(t["expr"]) for t in p.get("targets") or () if t.get("expr"))
        if exprs:
            out.append(Panel(path.name, str(p.get("title")), exprs))
    return out


def panels() -> list[Panel]:
    found = [p for f in sorted(DASHBOARDS.glob("*.json")) for p in load(f)]
    assert found, f"no dashboard panels under {DASHBOARDS}"
    return found
