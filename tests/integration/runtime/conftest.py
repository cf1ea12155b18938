"""Fixtures for the runtime library's integration tests: a Client and a small test CRD."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kaitopy.runtime import Client, Kind, Obj
from tests.support.cluster import Cluster

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.runtime-test.example.com"},
    "spec": {
        "group": "runtime-test.example.com",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}
WIDGET = Kind("runtime-test.example.com", "v1", "Widget", "widgets")


@pytest.fixture(scope="session")
def widget_crd(kube_cluster: Cluster) -> Kind:
    """The Widget CRD, installed once per session and left in place (it is cluster-scoped and harmless)."""
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(WIDGET_CRD))
    kube_cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/widgets.runtime-test.example.com"
    )
    return WIDGET


@pytest.fixture
async def client(kube_cluster: Cluster) -> AsyncIterator[Client]:
    async with await Client.from_kubeconfig(str(kube_cluster.kubeconfig)) as c:
        yield c


class Recorder:
    """An EventHandler that remembers what it was told, as (event, name) pairs."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def on_add(self, obj: Obj) -> None:
        self.events.append(("add", obj["metadata"]["name"]))

    def on_update(self, old: Obj, new: Obj) -> None:
        self.events.append(("update", new["metadata"]["name"]))

    def on_delete(self, obj: Obj) -> None:
        self.events.append(("delete", obj["metadata"]["name"]))


def widget(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "runtime-test.example.com/v1",
        "kind": "Widget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
