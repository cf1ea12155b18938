"""The write helpers against the real API server: events, finalizers, create-or-update, status."""

from __future__ import annotations

import pytest

from kaitopy.runtime import (
    Client,
    Conflict,
    EventRecorder,
    Kind,
    NotFound,
    add_finalizer,
    create_or_update,
    is_deleting,
    kinds,
    patch_status,
    remove_finalizer,
)
from tests.support.wait import eventually

from .conftest import widget

FINALIZER = "runtime-test.example.com/cleanup"


async def test_event_recorder_folds_repeats_into_one_series(client: Client, namespace: str) -> None:
    cm = await client.create(kinds.CONFIG_MAP, {"metadata": {"name": "subject", "namespace": namespace}})
    rec = EventRecorder(client, "runtime-test")
    for _ in range(3):
        await rec.event(cm, "Warning", "Failing", "the same problem again", action="Reconcile")
    await rec.event(cm, "Normal", "Recovered", "better now", action="Reconcile")
    events = (await client.list(kinds.EVENT, namespace)).items
    by_reason = {e["reason"]: e for e in events}
    assert sorted(by_reason) == ["Failing", "Recovered"]  # three repeats, one Event
    failing = by_reason["Failing"]
    assert failing["series"]["count"] == 3
    assert failing["regarding"]["uid"] == cm["metadata"]["uid"]
    assert failing["reportingController"] == "runtime-test"
    assert "series" not in by_reason["Recovered"]


async def test_finalizer_holds_deletion_until_removed(client: Client, namespace: str) -> None:
    cm = await client.create(kinds.CONFIG_MAP, {"metadata": {"name": "held", "namespace": namespace}})
    with_fin = await add_finalizer(client, kinds.CONFIG_MAP, cm, FINALIZER)
    assert with_fin["metadata"]["finalizers"] == [FINALIZER]
    assert await add_finalizer(client, kinds.CONFIG_MAP, with_fin, FINALIZER) is with_fin  # no write
    with pytest.raises(Conflict):  # a stale copy cannot clobber newer finalizers
        await add_finalizer(client, kinds.CONFIG_MAP, cm, "other.example.com/x")
    await client.delete(kinds.CONFIG_MAP, "held", namespace)
    deleting = await client.get(kinds.CONFIG_MAP, "held", namespace)
    assert is_deleting(deleting)
    await remove_finalizer(client, kinds.CONFIG_MAP, deleting, FINALIZER)

    async def gone() -> bool:
        try:
            await client.get(kinds.CONFIG_MAP, "held", namespace)
        except NotFound:
            return True
        return False

    await eventually(gone, timeout=20, what="deletion after the finalizer was removed")


async def test_create_or_update_and_patch_status_write_only_on_change(
    client: Client, namespace: str, widget_crd: Kind
) -> None:
    desired = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg", "namespace": namespace, "labels": {"a": "1"}},
        "data": {"k": "v"},
    }
    writes = lambda: client.metrics.requests(method="POST") + client.metrics.requests(method="PUT")  # noqa: E731
    created, wrote = await create_or_update(client, kinds.CONFIG_MAP, desired, current=None)
    assert wrote
    before = writes()
    same, wrote = await create_or_update(client, kinds.CONFIG_MAP, desired, current=created)
    assert (wrote, writes() - before) == (False, 0)
    assert same is created
    changed = {**desired, "data": {"k": "w"}}
    updated, wrote = await create_or_update(client, kinds.CONFIG_MAP, changed, current=created)
    assert wrote and updated["data"] == {"k": "w"} and updated["metadata"]["labels"] == {"a": "1"}

    w = await client.create(widget_crd, widget("s", namespace, size=1))
    status = {"phase": "Ready", "replicas": 1}
    w2, wrote = await patch_status(client, widget_crd, w, status)
    assert wrote and w2["status"] == status
    patches = client.metrics.requests(method="PATCH")
    _, wrote = await patch_status(client, widget_crd, w2, dict(status))
    assert not wrote and client.metrics.requests(method="PATCH") == patches
    with pytest.raises(Conflict):  # status computed from a stale object is refused
        await patch_status(client, widget_crd, w, {"phase": "Stale"})
