"""End-to-end fixtures: the operator's two processes against the session's control plane."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.operator import Operator
from tests.support.cluster import Cluster


@pytest.fixture
def operator(kube_cluster: Cluster, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Operator]:
    """Controller and kwok provisioner, started fresh for each test; their logs are printed when
    the test fails."""
    op = Operator(kube_cluster.kubeconfig, tmp_path)
    try:
        yield op
    finally:
        op.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(op.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    rep = yield
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]
    return rep
