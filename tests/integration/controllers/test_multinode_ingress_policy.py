"""The API server accepts a multi-node Workspace's ingress NetworkPolicy as rendered (server-side dry run)."""

from __future__ import annotations

import json

from kaitopy.controllers.workspace.ingress import multinode_ingress_policy
from tests.support.cluster import Cluster
from tests.unit.controllers.test_multinode_ingress import PLAN


def test_the_rendered_policy_is_valid(kube_cluster: Cluster) -> None:
    out = kube_cluster.kubectl(
        "create",
        "--dry-run=server",
        "-o",
        "json",
        "-f",
        "-",
        input=json.dumps(multinode_ingress_policy(PLAN)),
    )
    created = json.loads(out)
    assert created["kind"] == "NetworkPolicy"
    assert created["spec"]["ingress"] == multinode_ingress_policy(PLAN)["spec"]["ingress"]
