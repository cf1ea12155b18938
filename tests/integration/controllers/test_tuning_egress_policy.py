"""The API server accepts the tuning pods' egress NetworkPolicy as rendered (a server-side dry run:
an ipBlock `except` outside its `cidr`, or a bad port, would be refused here)."""

from __future__ import annotations

import json
from dataclasses import replace

from kaitopy.controllers.workspace.egress import tuning_egress_policy
from kaitopy.controllers.workspace.plan import TuningPlan
from tests.support.cluster import Cluster

PLAN = TuningPlan(
    name="tune",
    namespace="default",
    preset="phi-3-mini-4k-instruct",
    method="qlora",
    image="ghcr.io/kaitopy/runtime:0.1.0",
    hf_model_id="microsoft/Phi-3-mini-4k-instruct",
    gpus_per_node=1,
    match_labels={"apps": "tune"},
    input_urls=("https://example.com/d.jsonl",),
    output_image="10.229.254.1:5001/adapters/tune:1",
    output_push_secret="push",
)


def test_the_rendered_policy_is_valid(kube_cluster: Cluster) -> None:
    for plan in (PLAN, replace(PLAN, output_image="[fd00::5]:5000/a:1")):
        out = kube_cluster.kubectl(
            "create",
            "--dry-run=server",
            "-o",
            "json",
            "-f",
            "-",
            input=json.dumps(tuning_egress_policy(plan)),
        )
        assert json.loads(out)["kind"] == "NetworkPolicy"
