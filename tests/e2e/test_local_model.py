"""The product end to end on a real node: a Workspace for the small CPU preset makes a NodeClaim,
the `local` provider turns it into a kubelet + containerd node, the pod pulls the model-server image
and (init container) the weights artifact from the loopback registry, becomes Ready only once its
real readiness probe passes, and answers through the Service. Deleting the Workspace removes the
node and leaves nothing of it on the machine."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.operator import Operator
from tests.support import localnodes
from tests.support.cluster import Cluster
from tests.support.localnodes import wait

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "inference" / "kaitopy_workspace_smollm2_local.yaml"
PRESET = "smollm2-135m-instruct"
KAITOPY = str(Path(sys.executable).parent / "kaitopy")


def post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as r:
        answer: dict[str, object] = json.loads(r.read().decode())
    return answer


def test_a_cpu_preset_workspace_runs_on_a_real_node_and_answers_through_its_service(
    local_model_operator: tuple[Operator, Path], kube_cluster: Cluster, namespace: str
) -> None:
    operator, local_dir = local_model_operator
    k = kube_cluster.kubectl
    ws = yaml.safe_load(EXAMPLE.read_text())
    ws["metadata"]["namespace"] = namespace
    name = ws["metadata"]["name"]
    netns_before = localnodes.netns()
    k("apply", "-f", "-", input=json.dumps(ws))
    try:
        check_the_workspace(k, name, namespace, local_dir, netns_before, operator, kube_cluster.kubeconfig)
    except BaseException:
        print(k("get", "workspace,pods,nodeclaims,nodes", "-A", "-o", "wide", check=False))
        print(k("describe", "pods", "-n", namespace, check=False)[-6000:])
        raise
    finally:
        # Even after a failure, while the operator still runs: its finalizers remove the node.
        k("delete", "workspace", name, "-n", namespace, "--ignore-not-found", "--wait=false", check=False)
        gone = lambda: "NotFound" in k("get", "workspace", name, "-n", namespace, check=False)  # noqa: E731
        wait("the Workspace to be gone", gone, timeout=300)


def check_the_workspace(
    k: Callable[..., str],
    name: str,
    namespace: str,
    local_dir: Path,
    netns_before: set[str],
    operator: Operator,
    admin: Path,
) -> None:
    def succeeded() -> bool:
        got = json.loads(k("get", "workspace", name, "-n", namespace, "-o", "json"))
        conditions = {c["type"]: c["status"] for c in (got.get("status") or {}).get("conditions") or ()}
        return conditions.get("WorkspaceSucceeded") == "True"

    wait("WorkspaceSucceeded", succeeded, timeout=900)
    pod = json.loads(k("get", "pods", "-n", namespace, "-l", f"kaito.sh/workspace={name}", "-o", "json"))[
        "items"
    ][0]
    node_name = pod["spec"]["nodeName"]
    node = json.loads(k("get", "node", node_name, "-o", "json"))
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert node["metadata"]["labels"]["kaito.sh/node-provider"] == "local"
    # The readiness probe really ran against the server: Ready came after the container started.
    model = next(s for s in pod["status"]["containerStatuses"] if s["name"] == "model")
    assert model["ready"] and model["restartCount"] == 0
    ready_at = next(c["lastTransitionTime"] for c in pod["status"]["conditions"] if c["type"] == "Ready")
    assert ready_at >= model["state"]["running"]["startedAt"]
    pulled = next(s for s in pod["status"]["initContainerStatuses"] if s["name"] == "weights")
    assert pulled["state"]["terminated"]["exitCode"] == 0
    init = next(c for c in pod["spec"]["initContainers"] if c["name"] == "weights")
    assert any(a.startswith("--digest=sha256:") for a in init["args"]), init["args"]  # pinned

    check_the_startup_timeline(k, name, namespace, pod, operator, admin)

    ip = k("get", "service", name, "-n", namespace, "-o", "jsonpath={.spec.clusterIP}").strip()
    question = [{"role": "user", "content": "What is the capital of France?"}]
    completion = post(
        f"http://{ip}/v1/chat/completions",
        {"model": PRESET, "messages": question, "max_tokens": 32, "temperature": 0},
    )
    assert "paris" in str(completion["choices"][0]["message"]["content"]).lower(), completion  # type: ignore[index]
    chat = post(
        f"http://{ip}/chat",
        {"messages": question, "generate_kwargs": {"max_new_tokens": 32, "do_sample": False}},
    )
    assert "paris" in str(chat["Result"]).lower(), chat

    record = json.loads((local_dir / "nodes" / node_name / "node.json").read_text())
    k("delete", "workspace", name, "-n", namespace, "--wait=false")
    wait("the node to be gone", lambda: "NotFound" in k("get", "node", node_name, check=False), timeout=180)
    assert localnodes.leftovers(local_dir / "nodes" / node_name, node_name, f"kpbr{record['index']}") == []
    assert localnodes.netns() - netns_before == set()


def check_the_startup_timeline(
    k: Callable[..., str], name: str, namespace: str, pod: dict[str, Any], operator: Operator, admin: Path
) -> None:
    """status.startup: the phases this real start went through, taken from the claim, the pod and
    the kubelet's events, consistent with the pod's own record; the histogram; `kaitopy status`."""
    ws = json.loads(k("get", "workspace", name, "-n", namespace, "-o", "json"))
    startup = ws["status"]["startup"]
    phases = {p["name"]: p for p in startup["phases"]}
    assert list(phases) == ["NodeProvisioning", "Scheduling", "ImagePull", "WeightsDownload", "EngineStart"]
    assert startup["startedAt"] == ws["metadata"]["creationTimestamp"]
    ready_at = next(c["lastTransitionTime"] for c in pod["status"]["conditions"] if c["type"] == "Ready")
    assert startup["readyAt"] == ready_at
    assert phases["EngineStart"]["finishedAt"] == ready_at
    weights = next(s for s in pod["status"]["initContainerStatuses"] if s["name"] == "weights")
    assert phases["WeightsDownload"]["startedAt"] == weights["state"]["terminated"]["startedAt"]
    # The node was requested and became ready before the pod existed; pulls took real time.
    assert phases["NodeProvisioning"]["finishedAt"] <= pod["metadata"]["creationTimestamp"]
    assert phases["ImagePull"]["seconds"] > 0.1
    assert all(0 <= p["seconds"] <= startup["seconds"] for p in startup["phases"])
    print("start-up timeline:", json.dumps(startup, indent=1))

    assert operator.controller is not None
    observed = operator.controller.metric("kaitopy_workspace_startup_phase_seconds_count", phase="ImagePull")
    assert observed >= 1
    shown = subprocess.run(
        [KAITOPY, "status", name, "-n", namespace, f"--kubeconfig={admin}"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert f"start-up (revision {startup['revision']})" in shown and "EngineStart" in shown, shown
