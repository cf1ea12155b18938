"""The write helpers against the real API server: events, finalizers, create-or-update, status."""

from __future__ import annotations

import pytest

from kaitopy.runtime import (
    Client,
    Conflict,
    EventRecorder,
    EventRecorderSettings,
    FakeClock,
    Kind,
    NotFound,
    add_finalizer,
    apply,
    create_or_update,
    is_deleting,
    kinds,
    patch_status,
    remove_finalizer,
)
from kaitopy.runtime.apply import APPLIED_HASH
from tests.support.wait import eventually

from .conftest import widget

FINALIZER = "runtime-test.example.com/cleanup"


async def test_event_recorder_folds_repeats_into_one_series(client: Client, namespace: str) -> None:
    cm = await client.create(kinds.CONFIG_MAP, {"metadata": {"name": "subject", "namespace": namespace}})
    rec = EventRecorder(client, "runtime-test")
    writes = lambda: client.metrics.requests(method="POST") + client.metrics.requests(method="PATCH")  # noqa: E731
    before = writes()
    for _ in range(3):
        await rec.event(cm, "Warning", "Failing", "the same problem again", action="Reconcile")
    await rec.event(cm, "Normal", "Recovered", "better now", action="Reconcile")
    assert writes() - before == 0  # queued: written by the recorder's writers, not by event()
    await rec.drain()
    assert writes() - before == 2  # repeats are counted in memory, not written one by one
    await rec.flush()  # ...until the series is due or flushed
    assert writes() - before == 3
    events = (await client.list(kinds.EVENT, namespace)).items
    by_reason = {e["reason"]: e for e in events}
    assert sorted(by_reason) == ["Failing", "Recovered"]  # three repeats, one Event
    failing = by_reason["Failing"]
    assert failing["series"]["count"] == 3
    assert failing["regarding"]["uid"] == cm["metadata"]["uid"]
    assert failing["reportingController"] == "runtime-test"
    assert "series" not in by_reason["Recovered"]


async def test_event_recorder_writes_repeats_once_per_interval(client: Client, namespace: str) -> None:
    cm = await client.create(kinds.CONFIG_MAP, {"metadata": {"name": "noisy", "namespace": namespace}})
    clock = FakeClock()
    rec = EventRecorder(
        client, "runtime-test", settings=EventRecorderSettings(series_write_interval=60), clock=clock
    )
    writes = lambda: client.metrics.requests(method="POST") + client.metrics.requests(method="PATCH")  # noqa: E731
    before = writes()
    for _ in range(20):  # a PDB blocking a drain: the same warning every few seconds
        await rec.event(cm, "Warning", "DrainBlocked", "a PodDisruptionBudget blocks eviction")
        clock.advance(2)
    await rec.drain()
    assert writes() - before == 1  # one create; 19 repeats within the interval write nothing
    clock.advance(60)
    await rec.event(cm, "Warning", "DrainBlocked", "a PodDisruptionBudget blocks eviction")
    await rec.drain()
    assert writes() - before == 2  # one series update carries all 21
    events = [e for e in (await client.list(kinds.EVENT, namespace)).items if e["reason"] == "DrainBlocked"]
    assert len(events) == 1 and events[0]["series"]["count"] == 21


async def test_event_recorder_aggregates_similar_events_and_filters_spam(
    client: Client, namespace: str
) -> None:
    cm = await client.create(kinds.CONFIG_MAP, {"metadata": {"name": "spammy", "namespace": namespace}})
    settings = EventRecorderSettings(aggregate_max_similar=3, spam_burst=8, spam_refill_interval=3600)
    rec = EventRecorder(client, "runtime-test", settings=settings, clock=FakeClock())
    for i in range(6):  # the same reason, a different note each time
        await rec.event(cm, "Warning", "Retrying", f"attempt {i} failed")
    await rec.drain()
    events = [e for e in (await client.list(kinds.EVENT, namespace)).items if e["reason"] == "Retrying"]
    notes = sorted(e["note"] for e in events)
    assert len(events) == 4, notes  # 3 distinct, then one combined Event for the rest
    assert "(combined from similar events): Retrying" in notes
    for i in range(10):  # 6 spent of the burst of 8: two more pass, the rest are dropped
        await rec.event(cm, "Normal", f"Other{i}", "x")
    assert rec.dropped == 8
    await rec.close()
    others = [e for e in (await client.list(kinds.EVENT, namespace)).items if e["reason"].startswith("Other")]
    assert len(others) == 2


async def test_event_recorder_memory_is_bounded(client: Client, namespace: str) -> None:
    cm = await client.create(kinds.CONFIG_MAP, {"metadata": {"name": "many", "namespace": namespace}})
    rec = EventRecorder(client, "runtime-test", settings=EventRecorderSettings(max_tracked=4, spam_burst=100))
    for i in range(20):
        await rec.event(
            {**cm, "metadata": {**cm["metadata"], "uid": f"u{i}"}}, "Normal", "Seen", f"object {i}"
        )
    assert rec.tracked <= 3 * 4  # before: one entry per distinct event, for ever
    await rec.close()


async def test_event_recorder_keeps_one_objects_events_in_order_across_lanes(
    client: Client, namespace: str
) -> None:
    # Four writer lanes: events of different objects go out concurrently, but each object's
    # events keep the order they were recorded in (a round-robin lane choice breaks this).
    subjects = [
        await client.create(kinds.CONFIG_MAP, {"metadata": {"name": f"ordered-{i}", "namespace": namespace}})
        for i in range(8)
    ]
    settings = EventRecorderSettings(writer_lanes=4, spam_burst=100)
    rec = EventRecorder(client, "runtime-test", settings=settings)
    for step in range(6):
        for cm in subjects:
            await rec.event(cm, "Normal", f"Step{step}", f"step {step}")
    await rec.close()
    events = (await client.list(kinds.EVENT, namespace)).items
    for cm in subjects:
        mine = [e for e in events if e["regarding"]["uid"] == cm["metadata"]["uid"]]
        by_creation = sorted(mine, key=lambda e: int(e["metadata"]["resourceVersion"]))
        assert [e["reason"] for e in by_creation] == [f"Step{i}" for i in range(6)]


async def test_event_recorder_drops_when_its_queue_is_full_and_never_blocks(
    client: Client, namespace: str
) -> None:
    cm = await client.create(kinds.CONFIG_MAP, {"metadata": {"name": "flood", "namespace": namespace}})
    rec = EventRecorder(
        client, "runtime-test", settings=EventRecorderSettings(queue_size=4, writer_lanes=1, spam_burst=100)
    )
    for i in range(10):  # no await yields to the writer in between: the queue holds 4
        await rec.event(cm, "Normal", f"Burst{i}", "x")
    assert rec.pending == 4 and rec.dropped == 6
    await rec.close()
    events = (await client.list(kinds.EVENT, namespace)).items
    written = [e for e in events if e["reason"].startswith("Burst")]
    assert sorted(e["reason"] for e in written) == [f"Burst{i}" for i in range(4)]
    await rec.event(cm, "Normal", "Burst5", "x")  # a dropped create is not taken for a written one
    await rec.close()
    written = [e for e in (await client.list(kinds.EVENT, namespace)).items if e["reason"] == "Burst5"]
    assert len(written) == 1


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


async def test_apply_prunes_fields_dropped_from_desired_and_skips_unchanged(
    client: Client, namespace: str
) -> None:
    def cm(data: dict[str, str]) -> dict[str, object]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "pruned", "namespace": namespace},
            "data": data,
        }

    first, wrote = await apply(
        client, kinds.CONFIG_MAP, cm({"keep": "1", "drop": "2"}), current=None, field_manager="t"
    )
    assert wrote and first["data"] == {"keep": "1", "drop": "2"}
    patches = client.metrics.requests(method="PATCH")
    _, wrote = await apply(
        client, kinds.CONFIG_MAP, cm({"keep": "1", "drop": "2"}), current=first, field_manager="t"
    )
    assert not wrote and client.metrics.requests(method="PATCH") == patches  # unchanged: no request
    # desired is still a subset of the object, but "drop" was removed from it: it must be pruned.
    pruned, wrote = await apply(client, kinds.CONFIG_MAP, cm({"keep": "1"}), current=first, field_manager="t")
    assert wrote
    live = await client.get(kinds.CONFIG_MAP, "pruned", namespace)
    assert live["data"] == {"keep": "1"}
    assert pruned["metadata"]["annotations"][APPLIED_HASH] == live["metadata"]["annotations"][APPLIED_HASH]


async def test_patch_status_deletes_keys_dropped_from_status(
    client: Client, namespace: str, widget_crd: Kind
) -> None:
    w = await client.create(widget_crd, widget("st", namespace, size=1))
    w2, _ = await patch_status(client, widget_crd, w, {"phase": "Failed", "error": {"code": 1, "why": "x"}})
    w3, wrote = await patch_status(client, widget_crd, w2, {"phase": "Ready", "error": {"code": 1}})
    assert wrote
    live = await client.get(widget_crd, "st", namespace)
    assert live["status"] == {"phase": "Ready", "error": {"code": 1}} == w3["status"]
