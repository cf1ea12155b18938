"""The InferenceSet reconcile against the real API server, with caches this test controls: a cache
that lags behind the controller's own writes must never make extra members (expectations), scale
down removes members that are not ready first, orphans with the set's label are adopted, and a spec
the controller will not serve is reported by field."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes_asyncio.client.api_client import ApiClient

from kaitopy.api.constants import INFERENCESET, WORKSPACE
from kaitopy.controllers.inferenceset import members as mb
from kaitopy.controllers.inferenceset.expectations import Expectations
from kaitopy.controllers.inferenceset.reconciler import (
    MEMBERS_BY_SET,
    InferenceSetReconciler,
    set_key_of_member,
)
from kaitopy.controllers.workspace.crds import ensure_workspace_crd
from kaitopy.runtime import Client, EventRecorder, Request, Store, freeze

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(api_client: ApiClient) -> Client:
    c = Client(api_client)
    await ensure_workspace_crd(c)  # the Workspace and InferenceSet CRDs
    return c


def inference_set(name: str, namespace: str, replicas: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "InferenceSet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "labelSelector": {"matchLabels": {"apps": name}},
            "template": {
                "resource": {"instanceType": "Standard_NC6s_v3"},
                "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
            },
            **spec,
        },
    }


async def snapshot(client: Client, namespace: str) -> tuple[Store, Store]:
    """(sets, workspaces) as a cache would hold them right now; they stay as they are afterwards."""
    sets, workspaces = Store(), Store({MEMBERS_BY_SET: set_key_of_member})
    for s in (await client.list(INFERENCESET, namespace)).items:
        sets.upsert(freeze(s))
    for w in (await client.list(WORKSPACE, namespace)).items:
        workspaces.upsert(freeze(w))
    return sets, workspaces


def reconciler(
    client: Client, stores: tuple[Store, Store], exp: Expectations | None = None
) -> InferenceSetReconciler:
    return InferenceSetReconciler(
        client, *stores, EventRecorder(client, "test"), expectations=exp or Expectations()
    )


async def reconcile_with_stale_members(
    client: Client, req: Request, members: Store, exp: Expectations
) -> None:
    """A reconcile whose cache shows the set as it is now but the members as `members` holds them."""
    sets, _ = await snapshot(client, req.namespace)
    await reconciler(client, (sets, members), exp).reconcile(req)


async def live_members(client: Client, namespace: str) -> list[str]:
    items = (await client.list(WORKSPACE, namespace, label_selector=mb.SET_LABEL)).items
    return sorted(w["metadata"]["name"] for w in items if not w["metadata"].get("deletionTimestamp"))


async def test_a_lagging_cache_never_makes_extra_members(client: Client, namespace: str) -> None:
    await client.create(INFERENCESET, inference_set("s", namespace, 2))
    req = Request(namespace, "s")
    _, stale = await snapshot(client, namespace)  # no members, and it never catches up
    exp = Expectations()
    await reconcile_with_stale_members(client, req, stale, exp)
    assert await live_members(client, namespace) == ["s-0", "s-1"]
    for _ in range(3):  # the cache still shows no members: the expectations hold the controller back
        await reconcile_with_stale_members(client, req, stale, exp)
    assert await live_members(client, namespace) == ["s-0", "s-1"]
    # Even a controller that lost its expectations (a restart) on a stale cache makes none: names are
    # fixed, so the create meets AlreadyExists.
    await reconcile_with_stale_members(client, req, stale, Expectations())
    assert await live_members(client, namespace) == ["s-0", "s-1"]

    # Scale to 1 with a cache that shows both members and never shows the deletion.
    await client.patch(INFERENCESET, "s", {"spec": {"replicas": 1}}, namespace=namespace)
    _, stale = await snapshot(client, namespace)
    await reconcile_with_stale_members(client, req, stale, exp)
    assert await live_members(client, namespace) == ["s-0"]
    for _ in range(3):
        await reconcile_with_stale_members(client, req, stale, exp)
    assert await live_members(client, namespace) == ["s-0"]  # not s-0 as well
    # Once the cache catches up, the controller acts again.
    await client.patch(INFERENCESET, "s", {"spec": {"replicas": 2}}, namespace=namespace)
    _, fresh = await snapshot(client, namespace)
    await reconcile_with_stale_members(client, req, fresh, exp)
    assert await live_members(client, namespace) == ["s-0", "s-1"]


async def set_ready(client: Client, namespace: str, name: str, ready: bool) -> None:
    cond = {
        "type": "InferenceReady",
        "status": "True" if ready else "False",
        "reason": "Test",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    await client.patch_status(WORKSPACE, name, {"status": {"conditions": [cond]}}, namespace=namespace)


async def test_scale_down_deletes_members_that_are_not_ready_first(client: Client, namespace: str) -> None:
    await client.create(INFERENCESET, inference_set("s", namespace, 3))
    req = Request(namespace, "s")
    await reconciler(client, await snapshot(client, namespace)).reconcile(req)
    assert await live_members(client, namespace) == ["s-0", "s-1", "s-2"]
    await set_ready(client, namespace, "s-0", False)
    for name in ("s-1", "s-2"):
        await set_ready(client, namespace, name, True)
    await reconciler(client, await snapshot(client, namespace)).reconcile(req)
    got = await client.get(INFERENCESET, "s", namespace=namespace)
    assert (got["status"]["replicas"], got["status"]["readyReplicas"]) == (3, 2)
    assert got["status"]["selector"] == "kaito.sh/workspace in (s-0,s-1,s-2)"
    ready = {c["type"]: c for c in got["status"]["conditions"]}["InferenceSetReady"]
    assert (ready["status"], ready["message"]) == ("False", "2 of 3 members ready")

    await client.patch(INFERENCESET, "s", {"spec": {"replicas": 2}}, namespace=namespace)
    await reconciler(client, await snapshot(client, namespace)).reconcile(req)
    assert await live_members(client, namespace) == ["s-1", "s-2"]  # s-0 (not ready) went, not s-2
    await client.patch(INFERENCESET, "s", {"spec": {"replicas": 1}}, namespace=namespace)
    await reconciler(client, await snapshot(client, namespace)).reconcile(req)
    assert await live_members(client, namespace) == ["s-1"]  # among ready ones, the newest
    await reconciler(client, await snapshot(client, namespace)).reconcile(req)
    got = await client.get(INFERENCESET, "s", namespace=namespace)
    assert (got["status"]["replicas"], got["status"]["readyReplicas"]) == (1, 1)
    ready = {c["type"]: c for c in got["status"]["conditions"]}["InferenceSetReady"]
    assert ready["status"] == "True"


async def test_an_orphan_with_the_set_label_is_adopted_not_duplicated(client: Client, namespace: str) -> None:
    created = await client.create(INFERENCESET, inference_set("s", namespace, 1))
    await client.create(WORKSPACE, mb.desired_member(created, "s-0"))
    await reconciler(client, await snapshot(client, namespace)).reconcile(Request(namespace, "s"))
    assert await live_members(client, namespace) == ["s-0"]
    ws = await client.get(WORKSPACE, "s-0", namespace=namespace)
    (ref,) = ws["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["uid"], ref["controller"]) == ("InferenceSet", created["metadata"]["uid"], True)


async def test_node_count_limit_holds_members_back_with_a_condition(client: Client, namespace: str) -> None:
    await client.create(INFERENCESET, inference_set("s", namespace, 3, nodeCountLimit=2))
    req = Request(namespace, "s")
    await reconciler(client, await snapshot(client, namespace)).reconcile(req)
    assert await live_members(client, namespace) == ["s-0", "s-1"]
    await reconciler(client, await snapshot(client, namespace)).reconcile(req)
    got = await client.get(INFERENCESET, "s", namespace=namespace)
    limit = {c["type"]: c for c in got["status"]["conditions"]}["NodeCountLimitReached"]
    assert limit["status"] == "True"
    assert "spec.nodeCountLimit allows 2 of 3 members" in limit["message"]


async def test_a_pod_template_is_refused_by_field(client: Client, namespace: str) -> None:
    body = inference_set("s", namespace, 1)
    body["spec"]["template"]["inference"] = {
        "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}
    }
    await client.create(INFERENCESET, body)
    await reconciler(client, await snapshot(client, namespace)).reconcile(Request(namespace, "s"))
    assert await live_members(client, namespace) == []
    got = await client.get(INFERENCESET, "s", namespace=namespace)
    ready = {c["type"]: c for c in got["status"]["conditions"]}["InferenceSetReady"]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert ready["message"].startswith("spec.template.inference.template:")
