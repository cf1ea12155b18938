"""Which NodeClaims a workspace needs, from what the caches hold: claims to create (by slot) and
claims to delete. Pure: the reconciler does the writes.

Matching nodes no claim of the workspace made (there already, or the user's) count first; the
shortfall is claimed slot by slot (`nodes.nodeclaim_name`). When such a node comes back (Ready
again, uncordoned), the claims made while it was away are surplus and go, or they would hold a
GPU node each for good."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kaitopy.api.nodeclaim import NODECLAIM_LABEL
from kaitopy.controllers.workspace.nodes import nodeclaim_name
from kaitopy.runtime.objects import Obj


@dataclass(frozen=True)
class ClaimDecision:
    wanted: int
    """How many claims the workspace needs: its node count less the foreign nodes it may use."""
    create: tuple[int, ...]
    """Slots with no claim in the cache (creating one twice is an AlreadyExists, never a node)."""
    delete: tuple[str, ...]
    """Claims of the workspace beyond the wanted slots, not already being deleted."""
    mine: tuple[Obj, ...]
    """The claims of the wanted slots: NodeClaimReady is judged on these."""


def decide_claims(
    *,
    workspace_uid: str,
    node_count: int,
    claims: Sequence[Obj],
    ready_nodes: Sequence[str],
    node_labels: Mapping[str, Mapping[str, str]],
) -> ClaimDecision:
    """`claims`: the workspace's claims in the cache; `ready_nodes`: the usable nodes' names;
    `node_labels`: their labels."""
    # A node is the workspace's own if a claim names it, or it carries the name of one of the
    # workspace's slots (the claim's status may lag behind its node in the cache): counting such a
    # node as foreign would make its own claim look surplus.
    slot_names = {nodeclaim_name(workspace_uid, i): i for i in range(max(node_count, 0))}
    have = {str(c["metadata"]["name"]) for c in claims}
    claim_nodes = {(c.get("status") or {}).get("nodeName") for c in claims}
    own_names = have | set(slot_names)
    foreign = [
        n
        for n in ready_nodes
        if n not in claim_nodes and (node_labels.get(n) or {}).get(NODECLAIM_LABEL) not in own_names
    ]
    wanted = max(0, node_count - len(foreign))
    slots = {nodeclaim_name(workspace_uid, i) for i in range(wanted)}
    create = tuple(i for i in range(wanted) if nodeclaim_name(workspace_uid, i) not in have)
    delete = tuple(
        sorted(
            str(c["metadata"]["name"])
            for c in claims
            if c["metadata"]["name"] not in slots and not c["metadata"].get("deletionTimestamp")
        )
    )
    mine = tuple(c for c in claims if c["metadata"]["name"] in slots)
    return ClaimDecision(wanted, create, delete, mine)
