"""The InferenceSet's decision: which members to create and delete, and what status to report.
Pure: the reconciler gathers the inputs and carries out the result."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kaitopy.controllers.inferenceset.members import Member, member_name

DEFAULT_MAX_UNAVAILABLE = 1


@dataclass(frozen=True)
class Inputs:
    set_name: str
    replicas: int
    node_count_limit: int
    """0: no limit."""
    rolling: bool
    """RollingUpdate (replace outdated members); False for OnDelete."""
    max_unavailable: int
    members: tuple[Member, ...]
    taken_names: frozenset[str] = frozenset()
    """Workspace names in the namespace that are not members: a new member never takes one."""


@dataclass(frozen=True)
class Decision:
    create: tuple[str, ...] = ()
    delete: tuple[str, ...] = ()
    replicas: int = 0
    ready_replicas: int = 0
    wanted: int = 0
    """spec.replicas."""
    allowed: int = 0
    """Members the node limit allows (wanted when there is none)."""
    reasons: list[str] = field(default_factory=list)
    """One line per action, for the logs and events."""

    @property
    def limited(self) -> bool:
        return self.allowed < self.wanted


def max_unavailable_of(update_strategy: Mapping[str, Any] | None, replicas: int) -> tuple[bool, int]:
    """(rolling, maxUnavailable) from an appsv1.StatefulSetUpdateStrategy; a percentage is of replicas,
    rounded down, at least 1."""
    strategy = update_strategy or {}
    kind = strategy.get("type", "RollingUpdate")
    if kind not in ("RollingUpdate", "OnDelete"):
        raise ValueError(f"updateStrategy.type {kind!r}")
    rolling = kind != "OnDelete"
    raw = (strategy.get("rollingUpdate") or {}).get("maxUnavailable", DEFAULT_MAX_UNAVAILABLE)
    percent = isinstance(raw, str) and raw.endswith("%")
    value = int(replicas * int(str(raw)[:-1]) / 100) if percent else int(raw)
    return rolling, max(1, value)


def allowed_members(replicas: int, limit: int, members: Iterable[Member]) -> int:
    """How many members fit under the node limit: each needs as many nodes as the largest member
    planned so far (1 before any is planned)."""
    if limit <= 0:
        return replicas
    per_member = max((m.nodes for m in members), default=1)
    return min(replicas, limit // per_member)


def _surplus_order(m: Member) -> tuple[bool, bool, int, str]:
    # Not-ready first (deleting them costs no capacity), then outdated, then the newest names.
    index = m.name.rsplit("-", 1)[-1]
    return (m.ready, m.current, -int(index) if index.isdigit() else 0, m.name)


def decide(inputs: Inputs) -> Decision:
    active = [m for m in inputs.members if not m.deleting]
    ready = sum(1 for m in active if m.ready)
    allowed = allowed_members(inputs.replicas, inputs.node_count_limit, inputs.members)
    reasons: list[str] = []
    create: list[str] = []
    delete: list[str] = []
    if len(active) < allowed:
        used = {m.name for m in inputs.members} | inputs.taken_names
        index = 0
        while len(create) < allowed - len(active):
            name = member_name(inputs.set_name, index)
            if name not in used:
                create.append(name)
            index += 1
        reasons.append(f"{len(active)} members, {allowed} wanted: creating {len(create)}")
    elif len(active) > allowed:
        surplus = sorted(active, key=_surplus_order)[: len(active) - allowed]
        delete = [m.name for m in surplus]
        reasons.append(f"{len(active)} members, {allowed} wanted: deleting {len(delete)} (not ready first)")
    elif inputs.rolling:
        outdated = [m for m in active if not m.current]
        # Replacing a member that is not serving costs nothing; a serving one only within budget.
        delete = [m.name for m in outdated if not m.ready]
        budget = inputs.max_unavailable - (allowed - ready)
        delete += [m.name for m in sorted(outdated, key=_surplus_order) if m.ready][: max(0, budget)]
        if delete:
            reasons.append(f"{len(outdated)} members on an old template: replacing {len(delete)}")
    return Decision(
        create=tuple(create),
        delete=tuple(delete),
        replicas=len(active),
        ready_replicas=ready,
        wanted=inputs.replicas,
        allowed=allowed,
        reasons=reasons,
    )
