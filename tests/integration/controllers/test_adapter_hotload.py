"""LoRA hot-load, the controller's half, on the real control plane (kwok runs the pods).

An adapter edit leaves the Deployment's pod template (and its hash) alone and reaches the running
pod as its adapter-list annotation; a new pull secret still rolls out (it must be mounted). The status
path runs against a real `kaitopy serve` on loopback: kwok's pods run nothing, so the reader is
pointed at that server, and the test plays the kubelet's part of copying the pod's annotation into the
server's downwardAPI file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from kaitopy.api import WORKSPACE
from kaitopy.controllers.workspace.adapterdelivery import HttpAdapterReader
from kaitopy.controllers.workspace.crds import ensure_workspace_crd
from kaitopy.controllers.workspace.plan import Settings
from kaitopy.controllers.workspace.planner import make_planner
from kaitopy.controllers.workspace.setup import wire
from kaitopy.controllers.workspace.workload import ADAPTER_LIST_ANNOTATION
from kaitopy.presets import Catalog
from kaitopy.runtime import Client, Manager, ManagerSettings, kinds
from kaitopy.runtime.objects import Obj
from kaitopy.tuning.oci import push
from tests.support import registry as registry_support
from tests.support.cluster import Cluster
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

REVISION = "kaito.sh/revision"


@contextlib.asynccontextmanager
async def controller(kube: Cluster, address_of: Callable[[Obj], str] | None = None) -> AsyncIterator[Client]:
    client = await Client.from_kubeconfig(str(kube.kubeconfig))
    async with client:
        await ensure_workspace_crd(client)
        settings = Settings(node_provisioner="byo")
        mgr = Manager(client, ManagerSettings(probe_host="127.0.0.1", probe_port=0, handle_signals=False))
        reader = HttpAdapterReader(address_of)
        wire(
            mgr,
            client,
            make_planner(Catalog.load(), settings),
            settings,
            WORKSPACE,
            resync_period=None,
            adapter_reader=reader,
        )
        task = asyncio.create_task(mgr.run())
        await asyncio.wait_for(mgr.wait_running(), 30)
        try:
            yield client
        finally:
            mgr.stop()
            await asyncio.wait_for(task, 30)
            await reader.close()


def workspace(name: str, namespace: str, adapters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": namespace},
        "resource": {"instanceType": "Standard_NC6s_v3", "labelSelector": {"matchLabels": {"apps": name}}},
        "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}, "adapters": adapters},
    }


def node(name: str, label: str) -> dict[str, Any]:
    capacity = {"cpu": "6", "memory": "112Gi", "pods": "110", "nvidia.com/gpu": "1"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {"apps": label, "node.kubernetes.io/instance-type": "Standard_NC6s_v3", "type": "kwok"},
        },
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def adapter(name: str, image: str, strength: str = "1.0", secrets: tuple[str, ...] = ()) -> dict[str, Any]:
    source: dict[str, Any] = {"name": name, "image": image}
    if secrets:
        source["imagePullSecrets"] = list(secrets)
    return {"source": source, "strength": strength}


@contextlib.asynccontextmanager
async def byo_node(client: Client, name: str, label: str) -> AsyncIterator[None]:
    await client.create(kinds.NODE, node(name, label))
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await client.delete(kinds.NODE, name)


async def model_pods(client: Client, name: str, namespace: str) -> list[Obj]:
    found = await client.list(kinds.POD, namespace=namespace, label_selector=f"kaito.sh/workspace={name}")
    return [p for p in found.items if not p["metadata"].get("deletionTimestamp")]


def listed(pod: Obj) -> list[str]:
    text = (pod["metadata"].get("annotations") or {}).get(ADAPTER_LIST_ANNOTATION)
    return [a["name"] for a in json.loads(text)["adapters"]] if text else []


async def set_adapters(client: Client, name: str, namespace: str, adapters: list[dict[str, Any]]) -> None:
    await client.patch(WORKSPACE, name, {"inference": {"adapters": adapters}}, namespace=namespace)


async def test_an_adapter_edit_patches_the_pod_and_rolls_nothing_out(
    kube_cluster: Cluster, namespace: str
) -> None:
    name = "hot"
    async with controller(kube_cluster) as client, byo_node(client, f"hot-{namespace}", name):
        await client.create(
            WORKSPACE, workspace(name, namespace, [adapter("ada", "registry.local/a/ada:1", "0.5")])
        )
        pods = await eventually(
            lambda: model_pods(client, name, namespace),
            until=lambda ps: len(ps) == 1 and listed(ps[0]) == ["ada"],
            timeout=90,
            what="the model pod with the adapter list",
        )
        pod = pods[0]["metadata"]["name"]
        before = await client.get(kinds.DEPLOYMENT, name, namespace=namespace)

        await set_adapters(
            client,
            namespace=namespace,
            name=name,
            adapters=[
                adapter("ada", "registry.local/a/ada:1", "1.0"),
                adapter("bob", "registry.local/a/bob:1"),
            ],
        )
        pods = await eventually(
            lambda: model_pods(client, name, namespace),
            until=lambda ps: len(ps) == 1 and listed(ps[0]) == ["ada", "bob"],
            timeout=60,
            what="the new adapter list on the pod",
        )
        assert pods[0]["metadata"]["name"] == pod  # the same pod: nothing restarted
        text = pods[0]["metadata"]["annotations"][ADAPTER_LIST_ANNOTATION]
        assert json.loads(text)["adapters"][0]["strength"] == "1.0"
        after = await client.get(kinds.DEPLOYMENT, name, namespace=namespace)
        assert after["metadata"]["annotations"][REVISION] == before["metadata"]["annotations"][REVISION]
        assert after["spec"]["template"] == before["spec"]["template"]
        assert after["metadata"]["generation"] == before["metadata"]["generation"]

        # A pull secret the template does not mount yet: the pods must be made anew to mount it.
        await set_adapters(
            client,
            namespace=namespace,
            name=name,
            adapters=[adapter("bob", "registry.local/a/bob:1", secrets=("regcred",))],
        )
        rolled = await eventually(
            lambda: client.get(kinds.DEPLOYMENT, name, namespace=namespace),
            until=lambda d: (
                d["metadata"]["annotations"][REVISION] != before["metadata"]["annotations"][REVISION]
            ),
            timeout=60,
            what="a rollout for the new pull secret",
        )
        volumes = {v["name"]: v for v in rolled["spec"]["template"]["spec"]["volumes"]}
        assert volumes["pull-secret-0"]["secret"]["secretName"] == "regcred"


@pytest.mark.skipif(not registry_support.available(), reason="needs Debian's docker-registry package")
async def test_status_adapters_come_from_the_model_server(
    kube_cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    from tests.integration.inference.conftest import ModelFiles, start_server, stop_server, wait_ready
    from tests.support.tinymodel import build_tiny_adapter, build_tiny_model

    model = build_tiny_model(tmp_path / "model")
    alpha = build_tiny_adapter(model, tmp_path / "alpha")
    (tmp_path / "adapters").mkdir()
    desired = tmp_path / "adapter-list"
    desired.write_text("")
    with registry_support.run_registry(tmp_path / "registry") as registry:
        secrets = tmp_path / "secrets" / "regcred"
        secrets.mkdir(parents=True)
        config = registry.docker_config(secrets / ".dockerconfigjson")
        ready_image = f"{registry.host}/adapters/alpha:v1"
        later_image = f"{registry.host}/adapters/later:v1"
        push(alpha, ready_image, config, plain_http=True)
        server = start_server(
            "transformers",
            ModelFiles(model=model, adapters=tmp_path / "adapters"),
            tmp_path / "server.log",
            f"--adapter-desired-file={desired}",
            f"--adapter-pull-secrets-dir={tmp_path / 'secrets'}",
            f"--plain-http-registry={registry.host}",
            "--allow-loopback-registry",
        )
        try:
            wait_ready(server)
            name = "hot-status"
            address = f"127.0.0.1:{server.port}"
            async with (
                controller(kube_cluster, lambda _pod: address) as client,
                byo_node(client, f"hs-{namespace}", name),
            ):
                kubelet = asyncio.create_task(_kubelet(client, name, namespace, desired))
                try:
                    await client.create(
                        WORKSPACE,
                        workspace(
                            name,
                            namespace,
                            [
                                adapter("alpha", ready_image, secrets=("regcred",)),
                                adapter("later", later_image, secrets=("regcred",)),
                            ],
                        ),
                    )
                    ws = await eventually(
                        lambda: client.get(WORKSPACE, name, namespace=namespace),
                        until=lambda w: _states(w) == {"alpha": "Ready", "later": "Pulling"},
                        timeout=120,
                        what="status.adapters: alpha Ready, later Pulling",
                    )
                    later = next(a for a in ws["status"]["adapters"] if a["name"] == "later")
                    assert "not in the registry" in later["reason"]
                    assert later["image"] == later_image
                    # The tuning run pushes its output: the adapter loads and the status follows.
                    push(alpha, later_image, config, plain_http=True)
                    await eventually(
                        lambda: client.get(WORKSPACE, name, namespace=namespace),
                        until=lambda w: _states(w) == {"alpha": "Ready", "later": "Ready"},
                        timeout=60,
                        what="status.adapters: both Ready",
                    )
                finally:
                    kubelet.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await kubelet
        finally:
            stop_server(server)


def _swap(path: Path, text: str) -> None:
    # Written whole and renamed in, as the kubelet swaps its downwardAPI files atomically.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _states(ws: Obj) -> dict[str, str]:
    return {a["name"]: a["state"] for a in (ws.get("status") or {}).get("adapters") or []}


async def _kubelet(client: Client, name: str, namespace: str, path: Path) -> None:
    """What the kubelet does for the downwardAPI volume: the pod's annotation, written as a file."""
    while True:
        for pod in await model_pods(client, name, namespace):
            text = (pod["metadata"].get("annotations") or {}).get(ADAPTER_LIST_ANNOTATION, "")
            if text and text != await asyncio.to_thread(path.read_text):
                await asyncio.to_thread(_swap, path, text)
        await asyncio.sleep(0.2)
