"""Multi-node serving on two real nodes: a Workspace for the multi-node CPU preset makes two
NodeClaims, the `local` provider turns them into two kubelet + containerd nodes, and the
controller's StatefulSet puts one rank on each, from the vLLM CPU image. Rank 0 hosts the group's
rendezvous and serves; rank 1 runs the second pipeline stage headless. The answer through the
Service is vLLM's with two pipeline stages, and the same as plain transformers gives.

Then the worker's pod is deleted: the leader notices its peer's new instance (or its silence),
exits so the group restarts as one, and the re-formed group answers again.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kaitopy.inference.app import EXIT_GROUP_RESTART
from tests.e2e.conftest import start_local_model_operator
from tests.e2e.operator import Operator
from tests.support import localnodes
from tests.support.cluster import Cluster
from tests.support.localnodes import wait
from tests.support.realmodel import greedy_answers

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "inference" / "kaitopy_workspace_smollm2_multinode_local.yaml"
PRESET = "smollm2-135m-instruct-multinode"
QUESTIONS = ("What is the capital of France?", "What is the largest planet?")
MAX_TOKENS = 24

pytestmark = [pytest.mark.slow, pytest.mark.multinode, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def vllm_image() -> str:
    return localnodes.ensure_images("model-server-vllm-cpu").refs["model-server-vllm-cpu"]


def test_a_multi_node_preset_spans_two_real_nodes_and_restarts_as_one(
    operator: Operator,
    kube_cluster: Cluster,
    model_images: localnodes.LocalImages,
    smollm2_weights: localnodes.Weights,
    vllm_image: str,
    tmp_path: Path,
    namespace: str,
) -> None:
    _, local_dir = start_local_model_operator(
        operator,
        kube_cluster,
        model_images,
        smollm2_weights,
        tmp_path,
        f"--cpu-vllm-runtime-image={vllm_image}",
    )
    k = kube_cluster.kubectl
    ws = yaml.safe_load(EXAMPLE.read_text())
    ws["metadata"]["namespace"] = namespace
    name = ws["metadata"]["name"]
    netns_before = localnodes.netns()
    k("apply", "-f", "-", input=json.dumps(ws))
    indexes: dict[str, int] = {}
    try:
        for node in check_the_group(k, name, namespace, smollm2_weights.model_dir):
            indexes[node] = json.loads((local_dir / "nodes" / node / "node.json").read_text())["index"]
    except BaseException:
        print(k("get", "workspace,statefulsets,pods,nodeclaims,nodes", "-A", "-o", "wide", check=False))
        print(k("describe", "pods", "-n", namespace, check=False)[-6000:])
        for rank in (0, 1):
            print(k("logs", f"{name}-{rank}", "-n", namespace, "--tail=80", check=False))
            print(k("logs", f"{name}-{rank}", "-n", namespace, "--previous", "--tail=40", check=False))
        raise
    finally:
        k("delete", "workspace", name, "-n", namespace, "--ignore-not-found", "--wait=false", check=False)
        gone = lambda: "NotFound" in k("get", "workspace", name, "-n", namespace, check=False)  # noqa: E731
        wait("the Workspace to be gone", gone, timeout=300)
    for node, index in indexes.items():
        wait(f"node {node} gone", lambda n=node: "NotFound" in k("get", "node", n, check=False), timeout=180)  # type: ignore[misc]
        assert localnodes.leftovers(local_dir / "nodes" / node, node, f"kpbr{index}") == []
    assert localnodes.netns() - netns_before == set()


def _conditions(k: Callable[..., str], name: str, namespace: str) -> dict[str, str]:
    got = json.loads(k("get", "workspace", name, "-n", namespace, "-o", "json"))
    return {c["type"]: c["status"] for c in (got.get("status") or {}).get("conditions") or ()}


def _model_status(k: Callable[..., str], pod: str, namespace: str) -> dict[str, Any]:
    got = json.loads(k("get", "pod", pod, "-n", namespace, "-o", "json"))
    return next(s for s in got["status"].get("containerStatuses") or () if s["name"] == "model")


def check_the_group(k: Callable[..., str], name: str, namespace: str, model_dir: Path) -> list[str]:
    started = time.monotonic()
    wait(
        "WorkspaceSucceeded",
        lambda: _conditions(k, name, namespace).get("WorkspaceSucceeded") == "True",
        timeout=1200,
    )
    print(f"two nodes, two ranks, Ready in {time.monotonic() - started:.0f}s")
    status = json.loads(k("get", "workspace", name, "-n", namespace, "-o", "json")).get("status") or {}
    print("start-up timeline:", json.dumps(status.get("startup")))
    sts = json.loads(k("get", "statefulset", name, "-n", namespace, "-o", "json"))
    assert sts["spec"]["replicas"] == 2
    pods = {
        p["metadata"]["name"]: p
        for p in json.loads(
            k("get", "pods", "-n", namespace, "-l", f"kaito.sh/workspace={name}", "-o", "json")
        )["items"]
    }
    assert sorted(pods) == [f"{name}-0", f"{name}-1"]
    nodes = [pods[f"{name}-{r}"]["spec"]["nodeName"] for r in (0, 1)]
    assert nodes[0] != nodes[1], nodes  # one rank per node
    for node in nodes:
        labels = json.loads(k("get", "node", node, "-o", "json"))["metadata"]["labels"]
        assert labels["kaito.sh/node-provider"] == "local"

    ip = k("get", "service", name, "-n", namespace, "-o", "jsonpath={.spec.clusterIP}").strip()
    localnodes.service_accepts(ip)
    expected = greedy_answers(model_dir, QUESTIONS, MAX_TOKENS)
    check_answers(ip, expected)
    # The worker runs its stage headless: its server is up but serves no model of its own.
    worker_ip = pods[f"{name}-1"]["status"]["podIP"]
    with urllib.request.urlopen(f"http://{worker_ip}:5000/v1/models", timeout=10) as r:
        assert json.load(r)["data"] == []

    # The worker's pod goes (deleted, as a drained or evicted pod is): the leader must not go on
    # with half a model. Its group watch sees the peer silent or a new instance and exits, so
    # the kubelet restarts it and both ranks meet again.
    restarts_before = _model_status(k, f"{name}-0", namespace).get("restartCount", 0)
    worker_uid = pods[f"{name}-1"]["metadata"]["uid"]
    k("delete", "pod", f"{name}-1", "-n", namespace, "--wait=false")
    lost = time.monotonic()

    def leader_restarted() -> dict[str, Any] | None:
        model = _model_status(k, f"{name}-0", namespace)
        return model if model.get("restartCount", 0) > restarts_before else None

    model = wait("the leader to restart with its group", leader_restarted, timeout=300)
    assert model is not None
    print(f"the leader restarted {time.monotonic() - lost:.0f}s after its worker's pod was deleted")
    assert model["lastState"]["terminated"]["exitCode"] == EXIT_GROUP_RESTART, model
    # Ready again means the restarted leader's container itself passed its probe (its group formed
    # anew), not a Workspace status the controller has not yet moved off the old container.
    wait(
        "the restarted leader Ready",
        lambda: _model_status(k, f"{name}-0", namespace).get("ready") is True,
        timeout=900,
    )
    wait(
        "WorkspaceSucceeded again",
        lambda: (
            _conditions(k, name, namespace).get("WorkspaceSucceeded") == "True"
            and _conditions(k, name, namespace).get("InferenceReady") == "True"
        ),
        timeout=300,
    )
    worker = json.loads(k("get", "pod", f"{name}-1", "-n", namespace, "-o", "json"))
    assert worker["metadata"]["uid"] != worker_uid  # a new worker pod joined the restarted leader
    check_answers(ip, expected)
    print(f"the group answered again {time.monotonic() - lost:.0f}s after its worker's pod was deleted")
    return nodes


def check_answers(ip: str, expected: dict[str, str]) -> None:
    got = {}
    for question in QUESTIONS:
        answer = localnodes.chat_completion(ip, PRESET, question, MAX_TOKENS, timeout=180)
        got[question] = answer["choices"][0]["message"]["content"]
        # vLLM names its layout in the fingerprint: two pipeline stages served this answer.
        assert "-pp2-" in str(answer.get("system_fingerprint")), answer
    assert got == expected
    assert "Paris" in got[QUESTIONS[0]]
