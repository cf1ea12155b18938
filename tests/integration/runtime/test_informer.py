"""Informers against the real API server: sync, events, selectors, 410 recovery, shared cache."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import pytest

from kaitopy.runtime import (
    Backoff,
    Client,
    Informer,
    InformerCache,
    InformerSettings,
    Kind,
    index_by_label,
    kinds,
    trim_node,
)
from kaitopy.runtime.cache.informer import MultiNamespaceInformer
from tests.support.cluster import Cluster
from tests.support.wait import eventually

from .conftest import Recorder, widget


async def test_sync_then_events(client: Client, namespace: str, widget_crd: Kind) -> None:
    await client.create(widget_crd, widget("before", namespace, size=1))
    inf = Informer(client, widget_crd, namespace=namespace, indexers={"color": index_by_label("color")})
    rec = Recorder()
    inf.add_handler(rec)
    inf.start()
    try:
        await asyncio.wait_for(inf.wait_synced(), 30)
        assert inf.has_synced
        assert rec.events == [("add", "before")]
        w = await client.create(
            widget_crd,
            {
                **widget("after", namespace, size=2),
                "metadata": {"name": "after", "namespace": namespace, "labels": {"color": "red"}},
            },
        )
        w["spec"]["size"] = 3
        await client.update(widget_crd, w)
        await client.delete(widget_crd, "before", namespace)

        async def seen() -> list[tuple[str, str]]:
            return rec.events

        await eventually(
            seen, until=lambda e: ("delete", "before") in e and len(e) >= 4, timeout=20, what="watch events"
        )
        assert rec.events == [("add", "before"), ("add", "after"), ("update", "after"), ("delete", "before")]
        after = inf.store.get(f"{namespace}/after")
        assert after is not None and after["spec"]["size"] == 3
        assert "managedFields" not in after["metadata"]  # stripped at ingest
        assert [o["metadata"]["name"] for o in inf.store.by_index("color", "red")] == ["after"]
        assert inf.store.get(f"{namespace}/before") is None
    finally:
        await inf.stop()


async def test_label_selector_scopes_the_cache(client: Client, namespace: str) -> None:
    for name, team in (("a", "x"), ("b", "y")):
        await client.create(
            kinds.CONFIG_MAP, {"metadata": {"name": name, "namespace": namespace, "labels": {"team": team}}}
        )
    inf = Informer(client, kinds.CONFIG_MAP, namespace=namespace, label_selector="team=x")
    inf.start()
    try:
        await asyncio.wait_for(inf.wait_synced(), 30)
        assert inf.store.keys() == [f"{namespace}/a"]
    finally:
        await inf.stop()


async def test_gone_relists_and_reports_missed_changes(
    client: Client, namespace: str, widget_crd: Kind, kube_cluster: Cluster
) -> None:
    for name in ("keep", "drop", "edit"):
        await client.create(widget_crd, widget(name, namespace, size=1))
    inf = Informer(client, widget_crd, namespace=namespace)
    rec = Recorder()
    inf.add_handler(rec)
    inf.start()
    await asyncio.wait_for(inf.wait_synced(), 30)
    await inf.stop()  # disconnected: these changes are not watched
    rec.events.clear()
    await client.delete(widget_crd, "drop", namespace)
    await client.create(widget_crd, widget("new", namespace, size=1))
    edit = await client.get(widget_crd, "edit", namespace)
    edit["spec"]["size"] = 2
    latest = await client.update(widget_crd, edit)
    # Compact etcd up to now, and resume from a resourceVersion the server no longer has:
    # the watch answers 410 Gone, as after a long disconnect.
    state = json.loads((kube_cluster.kubeconfig.parent / "state.json").read_text())
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"http://127.0.0.1:{state['ports']['etcd']}/v3/kv/compaction",
            json={"revision": latest["metadata"]["resourceVersion"]},
        )
        assert resp.status == 200
    inf._rv = "1"  # the oldest possible position: certainly compacted away
    relists = inf.relists
    inf.start()
    try:

        async def seen() -> list[tuple[str, str]]:
            return rec.events

        await eventually(seen, until=lambda e: len(e) >= 3, timeout=30, what="events after re-list")
        assert inf.relists == relists + 1
        assert sorted(rec.events) == [("add", "new"), ("delete", "drop"), ("update", "edit")]
        assert sorted(inf.store.keys()) == sorted(f"{namespace}/{n}" for n in ("edit", "keep", "new"))
        # ...and it keeps watching from the fresh list
        await client.delete(widget_crd, "keep", namespace)
        await eventually(
            seen, until=lambda e: ("delete", "keep") in e, timeout=20, what="delete after re-list"
        )
    finally:
        await inf.stop()


async def test_informer_cache_shares_one_informer_per_kind(client: Client, namespace: str) -> None:
    cache = InformerCache(client)
    a = cache.informer(kinds.CONFIG_MAP, namespace=namespace)
    b = cache.informer(kinds.CONFIG_MAP, namespace=namespace)
    assert a is b
    gets_before = client.metrics.requests(method="GET")
    cache.start()
    try:
        await asyncio.wait_for(cache.wait_synced(), 30)
        assert cache.has_synced
        await asyncio.sleep(0.2)
        assert (
            client.metrics.requests(method="GET") - gets_before <= 3
        )  # one list (maybe a refused stream) + one watch
    finally:
        await cache.stop()


async def test_stalled_stream_is_detected_and_resumed_without_a_relist(
    client: Client, namespace: str
) -> None:
    # An inactivity timeout far below the server's bookmark interval: every quiet second is a stall.
    settings = InformerSettings(inactivity_timeout=1.0, backoff=lambda: Backoff(initial=0.05, cap=0.1))
    inf = Informer(client, kinds.CONFIG_MAP, namespace=namespace, settings=settings)
    rec = Recorder()
    inf.add_handler(rec)
    inf.start()
    try:
        await asyncio.wait_for(inf.wait_synced(), 30)
        watches_before = client.metrics.requests(method="GET")
        await asyncio.sleep(3.5)
        await client.create(kinds.CONFIG_MAP, {"metadata": {"name": "late", "namespace": namespace}})

        async def seen() -> list[tuple[str, str]]:
            return rec.events

        await eventually(seen, until=lambda e: ("add", "late") in e, timeout=20, what="event after stalls")
        assert client.metrics.requests(method="GET") - watches_before >= 2  # it did reconnect
        assert inf.relists == 1  # ...each time from its resourceVersion, never by listing again
    finally:
        await inf.stop()


async def test_watches_the_server_ends_at_once_are_reopened_with_backoff(
    client: Client, namespace: str
) -> None:
    # The server ends every watch after 1 s with nothing in it; with min_watch_duration above that
    # each such watch counts as "ended at once", so the informer must wait 2-4 s before the next.
    settings = InformerSettings(
        watch_timeout_min=1,
        watch_timeout_max=1,
        min_watch_duration=2.0,
        backoff=lambda: Backoff(initial=2.0, cap=4.0),
    )
    inf = Informer(client, kinds.CONFIG_MAP, namespace=namespace, settings=settings)
    inf.start()
    try:
        await asyncio.wait_for(inf.wait_synced(), 30)
        before = client.metrics.requests(method="GET")
        await asyncio.sleep(8.0)
        watches = client.metrics.requests(method="GET") - before
        # Without a backoff a new watch follows each 1 s one: about 8 in 8 s. With it: at most 3.
        assert 1 <= watches <= 4, watches
    finally:
        await inf.stop()


async def test_cache_limited_to_namespaces_watches_only_those(
    client: Client, kube_cluster: Cluster, widget_crd: Kind
) -> None:
    """Namespace-scoped mode (--watch-namespaces): a namespaced kind asked for in all namespaces
    is listed and watched in the given ones only, into one store; a re-list of one namespace
    leaves the others' objects alone; cluster-scoped kinds are unaffected."""
    suffix = uuid.uuid4().hex[:8]
    a, b, other = (f"t-ns{i}-{suffix}" for i in ("a", "b", "o"))
    for ns in (a, b, other):
        kube_cluster.kubectl("create", "namespace", ns)
    cache = InformerCache(client, namespaces=(a, b))
    try:
        for ns in (a, b, other):
            await client.create(widget_crd, widget(f"w-{ns}", ns, size=1))
        inf = cache.informer(widget_crd)
        assert isinstance(inf, MultiNamespaceInformer)
        assert cache.informer(kinds.NODE).namespace is None and not isinstance(
            cache.informer(kinds.NODE), MultiNamespaceInformer
        )
        rec = Recorder()
        inf.add_handler(rec)
        cache.start()
        await asyncio.wait_for(cache.wait_synced(), 30)
        assert sorted(inf.store.keys()) == [f"{a}/w-{a}", f"{b}/w-{b}"]
        assert sorted(rec.events) == [("add", f"w-{a}"), ("add", f"w-{b}")]
        await client.create(widget_crd, widget("late", other, size=1))
        await client.create(widget_crd, widget("late", b, size=1))
        await client.delete(widget_crd, f"w-{a}", a)

        async def keys() -> list[str]:
            return sorted(inf.store.keys())

        await eventually(keys, until=lambda k: k == [f"{b}/late", f"{b}/w-{b}"], timeout=20, what="watch")
        assert ("add", "late") in rec.events and ("delete", f"w-{a}") in rec.events
        assert not [e for e in rec.events if e[1] == f"w-{other}"]
        # A re-list of namespace a (say after 410 Gone) replaces a's objects only.
        delta = inf.store.replace([], namespace=a)
        assert delta.deleted == [] and sorted(inf.store.keys()) == [f"{b}/late", f"{b}/w-{b}"]
    finally:
        for i in cache.informers:
            await i.stop()
        for ns in (a, b, other):
            kube_cluster.kubectl("delete", "namespace", ns, "--wait=false")


async def test_cache_stores_transformed_nodes_and_refuses_a_second_transform(client: Client) -> None:
    name = f"trim-{uuid.uuid4().hex[:8]}"
    node = await client.create(kinds.NODE, {"metadata": {"name": name, "labels": {"trim-test": "yes"}}})
    status = {"images": [{"names": ["big/image:1"], "sizeBytes": 1}], "allocatable": {"cpu": "4"}}
    await client.patch_status(kinds.NODE, name, {"status": status})
    cache = InformerCache(client)
    try:
        nodes = cache.informer(kinds.NODE, label_selector="trim-test=yes", transform=trim_node)
        assert cache.informer(kinds.NODE, label_selector="trim-test=yes") is nodes  # None: no opinion
        with pytest.raises(ValueError, match="transform"):
            cache.informer(kinds.NODE, label_selector="trim-test=yes", transform=lambda o: o)
        cache.start()
        await asyncio.wait_for(cache.wait_synced(), 30)
        cached = nodes.store.get_by_name(name)
        assert cached is not None
        assert "images" not in cached["status"] and cached["status"]["allocatable"] == {"cpu": "4"}
        assert "managedFields" not in cached["metadata"]  # the cache's own transform still runs first
    finally:
        await cache.stop()
        await client.delete(kinds.NODE, node["metadata"]["name"])
