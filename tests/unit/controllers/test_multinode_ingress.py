"""A multi-node Workspace's ingress NetworkPolicy: the ranks' ports open to the group's pods only."""

from __future__ import annotations

import pytest

from kaitopy.controllers.workspace import workload
from kaitopy.controllers.workspace.ingress import multinode_ingress_policy
from kaitopy.controllers.workspace.plan import SERVER_PORT, InferencePlan

pytestmark = pytest.mark.unit

PLAN = InferencePlan(
    name="llama70b",
    namespace="default",
    preset="llama-3.3-70b-instruct",
    runtime="vllm",
    image="ghcr.io/kaitopy/runtime:0.1.0",
    node_count=2,
    gpus_per_node=1,
    tensor_parallel_size=1,
    pipeline_parallel_size=2,
    max_model_len=4096,
    dtype="bfloat16",
    hf_model_id="meta-llama/Llama-3.3-70B-Instruct",
    weights_gib=140.0,
    match_labels={"apps": "llama70b"},
)


def test_the_group_reaches_everything_and_others_only_the_server_port() -> None:
    policy = multinode_ingress_policy(PLAN)
    assert policy["metadata"]["namespace"] == "default"
    spec = policy["spec"]
    pod_labels = workload.statefulset(PLAN)["spec"]["template"]["metadata"]["labels"]
    selected = spec["podSelector"]["matchLabels"]
    assert selected.items() <= pod_labels.items()  # it selects the StatefulSet's pods
    assert spec["policyTypes"] == ["Ingress"]
    group, public = spec["ingress"]
    assert group == {"from": [{"podSelector": {"matchLabels": selected}}]}
    # No `from`: any source, but the model server's port alone; the rendezvous (29501) is not listed.
    assert public == {"ports": [{"protocol": "TCP", "port": SERVER_PORT}]}
