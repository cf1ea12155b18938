"""The short fault suite in CI: each scenario once, with seed 1 (`make chaos` runs them all with
more seeds). A broken invariant fails the test with the invariant's message."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.suite import SHORT, run_one
from tests.support.cluster import Cluster


@pytest.mark.parametrize("scenario", SHORT)
async def test_chaos_scenario(kube_cluster: Cluster, tmp_path: Path, scenario: str) -> None:
    outcome = await run_one(kube_cluster.kubeconfig, scenario, 1, tmp_path)
    assert outcome.violation is None, outcome.violation
