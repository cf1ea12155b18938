"""A small controller used by the tests: each Widget gets a Deployment (replicas = spec.size) and a
Ready condition. Written the way downstream controllers should be: observe from the cache, decide
in pure code, act through helpers that write nothing when nothing changed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kaitopy.runtime import (
    Client,
    Kind,
    Manager,
    Request,
    Result,
    apply,
    find_condition,
    kinds,
    patch_status,
    set_condition,
    set_controller_reference,
    thaw,
)
from kaitopy.runtime.objects import Obj

FIELD_MANAGER = "widget-controller"


def desired_deployment(w: Obj) -> dict[str, Any]:
    name, ns = w["metadata"]["name"], w["metadata"]["namespace"]
    labels = {"app": name}
    d: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "replicas": int(w["spec"].get("size", 1)),
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": "registry.invalid/widget:1"}]},
            },
        },
    }
    return dict(set_controller_reference(w, d))


def desired_status(w: Obj, now: datetime) -> dict[str, Any]:
    status = thaw(w.get("status") or {})
    old = find_condition(status.get("conditions"), "Ready")
    if old is not None and old.get("observedGeneration") == w["metadata"]["generation"]:
        return dict(status)
    status["conditions"] = set_condition(
        status.get("conditions"),
        "Ready",
        "True",
        reason="DeploymentApplied",
        observed_generation=w["metadata"]["generation"],
        now=now,
    )
    return dict(status)


def add_widget_controller(mgr: Manager, client: Client, widget_kind: Kind, namespace: str) -> None:
    widgets = mgr.cache.store(widget_kind, namespace=namespace)
    deployments = mgr.cache.store(kinds.DEPLOYMENT, namespace=namespace)

    async def reconcile(req: Request) -> Result | None:
        w = widgets.get(req.key)
        if w is None:
            return None
        await apply(
            client,
            kinds.DEPLOYMENT,
            desired_deployment(w),
            current=deployments.get(req.key),
            field_manager=FIELD_MANAGER,
        )
        await patch_status(client, widget_kind, w, desired_status(w, datetime.now(UTC)))
        return None

    (
        mgr.controller("widgets")
        .for_(widget_kind, namespace=namespace)
        .owns(kinds.DEPLOYMENT, namespace=namespace)
        .build(reconcile)
    )
