"""Pure helpers: objects, store, predicates, owner references, apply's change detection, backoff."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from kaitopy.runtime import (
    AlreadyOwned,
    Backoff,
    FakeClock,
    Store,
    freeze,
    index_by_owner_uid,
    is_subset,
    owner_mapper,
    predicates,
    set_controller_reference,
    strip_noise,
    thaw,
)
from kaitopy.runtime.errors import AlreadyExists, Conflict, Gone, Invalid, NotFound, api_error
from kaitopy.runtime.kinds import DEPLOYMENT, Kind
from kaitopy.runtime.objects import dumps, loads, loads_frozen


def cm(name: str, ns: str = "ns", rv: str = "1", **meta: Any) -> Any:
    return freeze(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": rv, **meta},
        }
    )


def test_frozen_objects_are_read_only_and_thaw_copies() -> None:
    obj = loads_frozen(b'{"metadata": {"name": "a", "labels": {"x": "1"}}, "items": [{"a": [1, 2]}]}')
    with pytest.raises(TypeError):
        obj["metadata"]["name"] = "b"
    assert obj["items"][0]["a"] == (1, 2)
    mutable = thaw(obj)
    mutable["metadata"]["name"] = "b"
    assert obj["metadata"]["name"] == "a"
    assert mutable["items"] == [{"a": [1, 2]}]


def test_frozen_lists_nested_in_lists_are_tuples_all_the_way_down() -> None:
    obj = loads_frozen(b'{"a": [[{"b": [1]}], []], "c": {"d": [{"e": {}}]}}')
    assert obj["a"] == (({"b": (1,)},), ())
    with pytest.raises(TypeError):
        obj["a"][0][0]["b"] = 2
    with pytest.raises(TypeError):
        obj["c"]["d"][0]["e"]["x"] = 1


def test_json_round_trips_what_the_fast_codec_refuses() -> None:
    # orjson alone raises on NaN (decoding), integers beyond 64 bits and non-string keys
    # (encoding); json takes them. int64's extremes (the API server's own range) stay exact.
    assert math.isnan(loads(b'{"x": NaN}')["x"])
    assert loads_frozen(b'{"n": [%d, %d]}' % (2**63 - 1, -(2**63)))["n"] == (2**63 - 1, -(2**63))
    big = 2**70 + 1
    assert json.loads(dumps({"n": big, 1: "one"})) == {"n": big, "1": "one"}


def test_dumps_encodes_frozen_objects_compactly() -> None:
    obj = loads_frozen(b'{"metadata": {"name": "a"}, "items": [{"a": [1, 2]}], "x": null}')
    assert dumps(obj) == b'{"metadata":{"name":"a"},"items":[{"a":[1,2]}],"x":null}'
    assert dumps(thaw(obj)) == dumps(obj)


def test_strip_noise_drops_managed_fields_and_last_applied() -> None:
    obj = freeze(
        {
            "metadata": {
                "name": "a",
                "managedFields": [{}],
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "k": "v"},
            }
        }
    )
    out = strip_noise(obj)
    assert dict(out["metadata"]["annotations"]) == {"k": "v"}
    assert "managedFields" not in out["metadata"]
    plain = freeze({"metadata": {"name": "a"}})
    assert strip_noise(plain) is plain


def test_store_indexes_and_replace_reports_missed_changes() -> None:
    owner = {"uid": "u1", "controller": True, "kind": "X", "apiVersion": "v1", "name": "o"}
    store = Store({"owner": index_by_owner_uid})
    store.upsert(cm("a", ownerReferences=[owner]))
    store.upsert(cm("b"))
    store.upsert(cm("c", ns="other"))
    assert [o["metadata"]["name"] for o in store.by_index("owner", "u1")] == ["a"]
    assert sorted(o["metadata"]["name"] for o in store.list("ns")) == ["a", "b"]
    delta = store.replace([cm("a", rv="1"), cm("b", rv="2"), cm("d")])
    assert [o["metadata"]["name"] for o in delta.added] == ["d"]
    assert [n["metadata"]["name"] for _, n in delta.updated] == ["b"]
    assert [o["metadata"]["name"] for o in delta.deleted] == ["c"]
    assert store.get("other/c") is None
    assert store.list("other") == []
    store.upsert(cm("a", rv="5"))  # the owner reference went away
    assert store.by_index("owner", "u1") == []


def test_predicates_combine() -> None:
    old = cm("a", generation=1, labels={"x": "1"})
    same_gen = cm("a", rv="2", generation=1, labels={"x": "2"})
    new_gen = cm("a", rv="3", generation=2, labels={"x": "1"})
    gen = predicates.generation_changed()
    labels = predicates.labels_changed()
    assert not gen.update(old, same_gen)
    assert gen.update(old, new_gen)
    assert (gen | labels).update(old, same_gen)
    assert not (gen & labels).update(old, same_gen)
    assert (~gen).update(old, same_gen)
    only_a = predicates.matching(lambda o: o["metadata"]["name"] == "a")
    assert only_a.create(old)
    assert not only_a.create(cm("b"))


def test_controller_reference_and_owner_mapper() -> None:
    owner = freeze({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "uid": "u1"}})
    other = freeze({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "e", "uid": "u2"}})
    obj: dict[str, Any] = {"metadata": {"name": "x", "namespace": "ns"}}
    set_controller_reference(owner, obj)
    set_controller_reference(owner, obj)  # idempotent
    assert len(obj["metadata"]["ownerReferences"]) == 1
    with pytest.raises(AlreadyOwned):
        set_controller_reference(other, obj)
    reqs = list(owner_mapper(DEPLOYMENT)(freeze(obj)))
    assert [r.key for r in reqs] == ["ns/d"]
    assert list(owner_mapper(Kind("other.io", "v1", "Deployment", "deployments"))(freeze(obj))) == []


def test_is_subset_ignores_server_added_fields() -> None:
    desired = {"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"containers": [{"name": "c"}]}}
    actual = freeze(
        {
            "metadata": {"name": "a", "uid": "u", "labels": {"x": "1", "y": "2"}},
            "spec": {"containers": [{"name": "c", "imagePullPolicy": "Always"}]},
        }
    )
    assert is_subset(desired, actual)
    assert not is_subset({"metadata": {"labels": {"x": "2"}}}, actual)
    assert not is_subset({"spec": {"containers": [{"name": "c"}, {"name": "d"}]}}, actual)


def test_backoff_doubles_with_jitter_caps_and_resets() -> None:
    clock = FakeClock()
    b = Backoff(clock=clock, rng=random.Random(1), jitter=0.0)
    assert [b.next_delay() for _ in range(8)] == [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]
    clock.advance(121)
    assert b.next_delay() == 0.8
    jittered = Backoff(clock=clock, rng=random.Random(1))
    first = jittered.next_delay()
    assert 0.8 <= first <= 1.6


def test_api_errors_map_to_types() -> None:
    body = (
        b'{"kind":"Status","reason":"Invalid","message":"bad","details":{"causes":'
        b'[{"field":"spec.x","reason":"FieldValueInvalid","message":"no"}]}}'
    )
    err = api_error(422, body, method="POST", path="/p")
    assert isinstance(err, Invalid)
    assert err.causes[0].field == "spec.x"
    assert isinstance(api_error(409, b'{"reason":"AlreadyExists"}'), AlreadyExists)
    assert type(api_error(409, b'{"reason":"Conflict"}')) is Conflict
    assert isinstance(api_error(404, b"not json"), NotFound)
    assert isinstance(api_error(0, b'{"kind":"Status","code":410,"reason":"Expired"}'), Gone)


def test_a_number_the_server_stores_as_a_quantity_string_is_unchanged() -> None:
    # Kaito's custom-model example writes `nvidia.com/gpu: 1`; the API server stores "1". Compared
    # as unequal, the Deployment was judged "changed" on every pass and never counted as rolled out.
    from kaitopy.runtime.apply import is_subset

    stored = {"resources": {"limits": {"nvidia.com/gpu": "1", "memory": "1Gi", "cpu": "500m"}}}
    assert is_subset({"resources": {"limits": {"nvidia.com/gpu": 1}}}, stored)
    assert is_subset({"resources": {"limits": {"memory": 1073741824, "cpu": 0.5}}}, stored)
    assert not is_subset({"resources": {"limits": {"nvidia.com/gpu": 2}}}, stored)
    assert not is_subset({"x": 1}, {"x": "not a quantity"})
    assert not is_subset({"x": True}, {"x": "1"})
