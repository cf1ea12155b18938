"""Races between the workspace reconciler and its caches, reproduced on purpose: the reconciler
runs over caches the test fills by hand (tests/support/lagcache.py) against the real API server,
so "a write not yet seen by the informer" is a step the test takes, not a timing accident."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kaitopy.api import WORKSPACE
from kaitopy.controllers.workspace import status as st
from kaitopy.controllers.workspace.crds import ensure_workspace_crd
from kaitopy.controllers.workspace.plan import WORKSPACE_LABEL
from kaitopy.controllers.workspace.reconciler import FINALIZER, NODECLAIM
from kaitopy.provisioner.install import ensure_crds
from kaitopy.runtime import Client, NotFound
from tests.integration.controllers.test_workspace_metrics import workspace
from tests.support.cluster import Cluster
from tests.support.lagcache import lagging_controller


@pytest.fixture
async def client(kube_cluster: Cluster) -> AsyncIterator[Client]:
    c = await Client.from_kubeconfig(str(kube_cluster.kubeconfig))
    async with c:
        await ensure_workspace_crd(c)
        await ensure_crds(c)
        yield c


async def claims_of(client: Client, namespace: str, name: str) -> list[str]:
    found = await client.list(NODECLAIM, label_selector=f"{WORKSPACE_LABEL}={name}")
    return [
        c["metadata"]["name"]
        for c in found.items
        if c["metadata"]["labels"].get("kaito.sh/workspacenamespace") == namespace
    ]


async def test_a_workspace_deleted_before_its_claim_is_cached_keeps_its_finalizer(
    client: Client, namespace: str
) -> None:
    ctl = lagging_controller(client)
    await client.create(WORKSPACE, workspace("early", namespace, "phi-4"))
    await ctl.reconcile(namespace, "early")  # adds the finalizer and creates the claim
    made = await claims_of(client, namespace, "early")
    assert made, "the first pass creates a node claim"
    assert ctl.stores.claims.list() == []  # ...which the claims informer has not seen yet

    await client.delete(WORKSPACE, "early", namespace=namespace)
    await ctl.reconcile(namespace, "early")
    # The claim is there on the server: the finalizer stays until it is gone, and it is on its way.
    ws = await client.get(WORKSPACE, "early", namespace=namespace)
    assert FINALIZER in ws["metadata"]["finalizers"]
    deleting = next(c for c in ws["status"]["conditions"] if c["type"] == st.WORKSPACE_DELETING)
    assert deleting["observedGeneration"] == ws["metadata"]["generation"]
    assert await claims_of(client, namespace, "early") == []  # no provisioner: deleted at once

    await ctl.reconcile(namespace, "early")  # nothing left: the finalizer goes, and the workspace
    with pytest.raises(NotFound):
        await client.get(WORKSPACE, "early", namespace=namespace)
