"""RecentWrites: a reconcile sees its own last write until the watch delivers it."""

from __future__ import annotations

from typing import Any

import pytest

from kaitopy.runtime import FakeClock, RecentWrites, Store, freeze

pytestmark = pytest.mark.unit


def ws(rv: str, state: str = "Pending") -> Any:
    return freeze(
        {"metadata": {"namespace": "ns", "name": "a", "resourceVersion": rv}, "status": {"state": state}}
    )


def test_the_newer_written_copy_wins_until_the_cache_catches_up() -> None:
    store, clock = Store(), FakeClock()
    writes = RecentWrites(store, clock=clock)
    store.upsert(ws("10"))
    writes.remember(ws("12", "Ready"))
    assert writes.get("ns/a")["status"]["state"] == "Ready"  # the cache still holds 10
    store.upsert(ws("11", "NotReady"))  # an intermediate event: still older than our write
    assert writes.get("ns/a")["metadata"]["resourceVersion"] == "12"
    store.upsert(ws("12", "Ready"))
    assert writes.get("ns/a") is store.get("ns/a")
    assert len(writes) == 0  # forgotten once caught up
    store.upsert(ws("15", "NotReady"))  # someone else wrote later: the cache is newest
    assert writes.get("ns/a")["status"]["state"] == "NotReady"


def test_an_older_write_never_hides_a_newer_cache() -> None:
    store = Store()
    writes = RecentWrites(store)
    store.upsert(ws("20", "Ready"))
    writes.remember(ws("19", "Pending"))
    assert writes.get("ns/a")["metadata"]["resourceVersion"] == "20"


def test_deleted_objects_stay_deleted() -> None:
    store = Store()
    writes = RecentWrites(store)
    writes.remember(ws("12"))
    assert writes.get("ns/a") is None  # not in the cache: deleted (a delete is newer than any write)
    assert len(writes) == 0


def test_entries_expire_and_are_swept() -> None:
    store, clock = Store(), FakeClock()
    writes = RecentWrites(store, ttl_s=5.0, clock=clock)
    store.upsert(ws("10"))
    writes.remember(ws("12", "Ready"))
    clock.advance(6.0)
    assert writes.get("ns/a")["metadata"]["resourceVersion"] == "10"  # a lost event must not pin it forever
    for i in range(300):  # keys nobody reads again are swept once they expire
        writes.remember(freeze({"metadata": {"namespace": "ns", "name": f"w{i}", "resourceVersion": "1"}}))
        clock.advance(0.1)
    assert len(writes) < 300


def test_opaque_versions_defer_to_the_cache() -> None:
    store = Store()
    writes = RecentWrites(store)
    store.upsert(ws("a1"))
    writes.remember(ws("b2", "Ready"))
    assert writes.get("ns/a")["metadata"]["resourceVersion"] == "a1"
