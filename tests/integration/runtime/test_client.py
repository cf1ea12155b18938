"""The client against the real API server: verbs, errors, paging, apply, discovery."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import pytest

from kaitopy.runtime import AlreadyExists, Client, Conflict, Invalid, Kind, NotFound, kinds, watch
from tests.support.cluster import Cluster

from .conftest import widget


async def test_crud_and_errors(client: Client, namespace: str) -> None:
    cm = {"metadata": {"name": "a", "namespace": namespace}, "data": {"k": "v"}}
    created = await client.create(kinds.CONFIG_MAP, cm)
    with pytest.raises(AlreadyExists):
        await client.create(kinds.CONFIG_MAP, cm)
    got = await client.get(kinds.CONFIG_MAP, "a", namespace)
    assert got["data"] == {"k": "v"}
    got["data"]["k"] = "w"
    updated = await client.update(kinds.CONFIG_MAP, got)
    created["data"]["k"] = "stale"
    with pytest.raises(Conflict):
        await client.update(kinds.CONFIG_MAP, created)  # old resourceVersion
    patched = await client.patch(kinds.CONFIG_MAP, "a", {"data": {"p": "1"}}, namespace=namespace)
    assert patched["data"] == {"k": "w", "p": "1"}
    jp = await client.patch(
        kinds.CONFIG_MAP, "a", [{"op": "remove", "path": "/data/p"}], namespace=namespace, type="json"
    )
    assert jp["data"] == {"k": "w"}
    assert int(jp["metadata"]["resourceVersion"]) > int(updated["metadata"]["resourceVersion"])
    await client.delete(kinds.CONFIG_MAP, "a", namespace)
    with pytest.raises(NotFound):
        await client.get(kinds.CONFIG_MAP, "a", namespace)
    assert await client.get_or_none(kinds.CONFIG_MAP, "a", namespace) is None


async def test_invalid_carries_field_causes(client: Client, namespace: str) -> None:
    with pytest.raises(Invalid) as err:
        await client.create(kinds.CONFIG_MAP, {"metadata": {"name": "Not_Valid", "namespace": namespace}})
    assert any(c.field == "metadata.name" for c in err.value.causes)


async def test_list_pages_through_everything(client: Client, namespace: str) -> None:
    small = Client(client._api, metrics=client.metrics, settings=type(client.settings)(page_size=3))
    for i in range(7):
        await client.create(kinds.CONFIG_MAP, {"metadata": {"name": f"c{i}", "namespace": namespace}})
    before = client.metrics.requests(method="GET")
    listed = await small.list(kinds.CONFIG_MAP, namespace)
    names = {o["metadata"]["name"] for o in listed.items}
    assert {f"c{i}" for i in range(7)} <= names
    assert client.metrics.requests(method="GET") - before == 3  # 3 + 3 + 2 (kube-root-ca.crt makes 8)
    assert listed.resource_version


async def test_server_side_apply_status_and_discovery(
    client: Client, namespace: str, widget_crd: Kind
) -> None:
    found = await client.kind("runtime-test.example.com/v1", "Widget")
    assert found == widget_crd
    w = await client.apply(
        widget_crd, widget("w", namespace, size=1, extra={"unknown": True}), field_manager="t"
    )
    assert w["spec"] == {"size": 1, "extra": {"unknown": True}}  # unknown CRD fields survive
    w2 = await client.patch_status(widget_crd, "w", {"status": {"phase": "Ready"}}, namespace=namespace)
    assert w2["status"] == {"phase": "Ready"}
    assert w2["metadata"]["generation"] == w["metadata"]["generation"]
    with pytest.raises(NotFound):
        await client.kind("runtime-test.example.com/v1", "Gadget")


async def test_requests_and_watches_go_through_the_environments_proxy(
    kube_cluster: Cluster, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client no longer lets aiohttp read the environment per request (trust_env): it resolves
    # $HTTPS_PROXY once. A CONNECT proxy on loopback shows both verbs and watches still use it.
    tunnels: list[bytes] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
        assert method == b"CONNECT"
        tunnels.append(target)
        host, _, port = target.decode().rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        async with await Client.from_kubeconfig(str(kube_cluster.kubeconfig)) as client:
            await client.create(kinds.CONFIG_MAP, {"metadata": {"name": "via-proxy", "namespace": namespace}})
            async for event in watch(client, kinds.CONFIG_MAP, namespace=namespace, timeout_seconds=1):
                if event.type == "ADDED" and event.object["metadata"]["name"] == "via-proxy":
                    break
        server_host = urlsplit(client.server).netloc.encode()
        assert tunnels and all(t == server_host for t in tunnels)
    finally:
        server.close()
