"""Shared fixtures: one control plane per test session, a fresh namespace per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.api_client import ApiClient

from tests.support import cluster as cluster_support
from tests.support import localnodes
from tests.support.wait import eventually

TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The directory decides the marker, so `-m unit` never needs a cluster.
    for item in items:
        path = Path(str(item.fspath))
        for kind in ("unit", "integration", "e2e"):
            if (TESTS / kind) in path.parents:
                item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[cluster_support.Cluster]:
    c = cluster_support.acquire()
    try:
        yield c
    finally:
        cluster_support.release(c)


@pytest.fixture(scope="session", autouse=True)
def loopback_registry() -> Iterator[None]:
    """The loopback registry the image builds start is stopped after the run that started it,
    as the control plane is (KAITOPY_KEEP_CLUSTER=1 keeps both); its storage stays as a cache."""
    was_running = localnodes.registry_healthy()
    yield
    if not was_running and os.environ.get("KAITOPY_KEEP_CLUSTER") != "1":
        localnodes.stop_registry()


@pytest.fixture
async def api_client(kube_cluster: cluster_support.Cluster) -> AsyncIterator[ApiClient]:
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(kube_cluster.kubeconfig), client_configuration=cfg)
    async with ApiClient(configuration=cfg) as api:
        yield api


@pytest.fixture
async def namespace(api_client: ApiClient) -> AsyncIterator[str]:
    """A fresh namespace, with its default service account in place (pods need it)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(api_client)
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    await eventually(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=60,
        what=f"default service account in {name}",
    )
    try:
        yield name
    finally:
        await core.delete_namespace(name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """In CI a skipped test is a failed test: a missing install step must not pass silently."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and os.environ.get("KAITOPY_FAIL_ON_SKIP") == "1":
        report.outcome = "failed"
        report.longrepr = f"skipped, and KAITOPY_FAIL_ON_SKIP=1 forbids skips: {report.longrepr}"
