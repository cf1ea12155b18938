"""Finding the objects that may select a labelled object (e.g. workspaces for a node) by index."""

from __future__ import annotations

from typing import Any

import pytest

from kaitopy.runtime import Store, index_by_match_labels, trim_node
from kaitopy.runtime.objects import freeze

pytestmark = pytest.mark.unit


def ws(name: str, match_labels: dict[str, str] | None) -> Any:
    return freeze(
        {
            "metadata": {"name": name, "namespace": "ns"},
            "resource": {"labelSelector": {"matchLabels": match_labels}},
        }
    )


def selector(obj: Any) -> Any:
    return ((obj.get("resource") or {}).get("labelSelector") or {}).get("matchLabels")


def test_only_workspaces_whose_match_labels_the_node_has_are_candidates() -> None:
    store = Store({"sel": index_by_match_labels(selector)})
    for i in range(1000):
        store.upsert(ws(f"other-{i}", {"pool": f"p{i}"}))
    store.upsert(ws("gpu", {"pool": "gpu", "sku": "a100"}))
    store.upsert(ws("anything", None))  # no matchLabels: a candidate for every node
    found = {o["metadata"]["name"] for o in store.selecting("sel", {"pool": "gpu", "zone": "z1"})}
    assert found == {"gpu", "anything"}  # 2 looked at, not 1002 (the full check is the caller's)
    store.upsert(ws("gpu", {"pool": "cpu"}))  # re-indexed on change
    found = {o["metadata"]["name"] for o in store.selecting("sel", {"pool": "gpu"})}
    assert found == {"anything"}


def test_trim_node_drops_the_bulky_status_and_keeps_what_is_read() -> None:
    node = freeze(
        {
            "metadata": {"name": "n", "labels": {"a": "b"}},
            "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {
                "conditions": [{"type": "Ready", "status": "True"}],
                "allocatable": {"nvidia.com/gpu": "1"},
                "images": [{"names": [f"img{i}"], "sizeBytes": i} for i in range(100)],
                "volumesInUse": ["v"],
            },
        }
    )
    trimmed = trim_node(node)
    assert set(trimmed["status"]) == {"conditions", "allocatable"}
    assert trimmed["metadata"] == node["metadata"] and trimmed["spec"] == node["spec"]
    assert trim_node(trimmed) is trimmed  # nothing to trim: no copy
