"""The ingress NetworkPolicy of a multi-node inference Workspace: the group's traffic stays inside it.

On several nodes, every pod runs vLLM with the group's size and its own rank. Pod 0 hosts the
torch.distributed rendezvous (kaitopy serve --leader-port), and the ranks then connect to each other
on ports they pick (gloo/NCCL, vLLM's message queues), with no authentication: anyone who reaches
those ports could feed the ranks tensors or commands. Binding them to loopback is not possible (the
other pods must reach them), so the network closes them instead. The policy selects the Workspace's
pods and allows:
  - anything from the Workspace's own pods (the ranks' traffic between the nodes);
  - the model server's port from anywhere (the Service, probes, clients), and nothing else."""

from __future__ import annotations

from typing import Any

from kaitopy.controllers.workspace import workload
from kaitopy.controllers.workspace.plan import WORKSPACE_LABEL, InferencePlan


def policy_name(plan: InferencePlan) -> str:
    return f"{plan.name}-group-ingress"


def multinode_ingress_policy(plan: InferencePlan) -> dict[str, Any]:
    group = workload.selector_labels(plan)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": policy_name(plan),
            "namespace": plan.namespace,
            "labels": {WORKSPACE_LABEL: plan.name},
        },
        "spec": {
            "podSelector": {"matchLabels": group},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": group}}]},
                {"ports": [{"protocol": "TCP", "port": workload.server_port(plan)}]},
            ],
        },
    }
