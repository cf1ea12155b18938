"""The product end to end on a real node: a Workspace for the small CPU preset makes a NodeClaim,
the `local` provider turns it into a kubelet + containerd node, the pod pulls the model-server image
and (init container) the weights artifact from the loopback registry, becomes Ready only once its
real readiness probe passes, and answers through the Service. Then the node dies as a crashed
machine would (its whole process group killed): the Workspace says NodeLost, the provisioner
replaces the claim, the pod follows to the new node and answers again. Deleting the Workspace
while that node's kubelet is dead still finishes, removes the node and leaves nothing of it on
the machine."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.operator import Operator, free_port
from tests.support import dashboards, localnodes, prometheus, render
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
        check_the_workspace(k, name, namespace, local_dir, netns_before, operator, kube_cluster)
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
    cluster: Cluster,
) -> None:
    admin = cluster.kubeconfig

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
    localnodes.service_accepts(ip)
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

    check_model_server_metrics(cluster, name, namespace, ip, question, local_dir.parent / "prometheus")
    check_node_loss(k, cluster.kubectl_argv(), name, namespace, local_dir, node_name, ip, question)

    # The replacement's kubelet dies too, and the Workspace is deleted: pods that nothing can stop
    # any more must not hold the claim's deletion (or the Workspace's) forever.
    record = json.loads((local_dir / "nodes" / node_name / "node.json").read_text())
    os.kill(record["pids"]["kubelet"], signal.SIGKILL)
    started = time.monotonic()
    k("delete", "workspace", name, "-n", namespace, "--wait=false")
    wait("the node to be gone", lambda: "NotFound" in k("get", "node", node_name, check=False), timeout=180)
    wait(
        "the Workspace gone", lambda: "NotFound" in k("get", "workspace", name, "-n", namespace, check=False)
    )
    print(f"deleted with a dead kubelet in {time.monotonic() - started:.0f}s")
    pods = json.loads(k("get", "pods", "-n", namespace, "-o", "json"))["items"]
    assert not pods, [(p["metadata"]["name"], p["spec"].get("nodeName"), p["status"]) for p in pods]
    assert localnodes.leftovers(local_dir / "nodes" / node_name, node_name, f"kpbr{record['index']}") == []
    assert localnodes.netns() - netns_before == set()


def check_model_server_metrics(
    cluster: Cluster, name: str, namespace: str, ip: str, question: list[dict[str, str]], workdir: Path
) -> None:
    """A real Prometheus finds the model-server pod as the shipped pod monitoring implies (pods
    labelled kaito.sh/workspace, port "http"), scrapes it on the real node, and every dashboard
    panel that only a model server feeds draws data."""
    prom = prometheus.Prometheus.start(
        workdir, cluster, free_port(), extra_jobs=[prometheus.model_server_job([namespace])]
    )
    try:
        start = time.time()

        def scraped() -> list[dict[str, Any]]:
            prom.rediscover()
            return [
                t
                for t in prom.targets()
                if t["labels"].get("job") == "kaitopy-model-server" and t.get("health") == "up"
            ]

        targets = wait("the model server scraped", scraped, timeout=60)
        assert targets[0]["labels"]["workspace"] == name and targets[0]["labels"]["namespace"] == namespace
        for _ in range(3):  # traffic for the rate panels, a few scrapes apart; streamed for TTFT
            body = {"model": PRESET, "messages": question, "max_tokens": 4, "stream": True}
            request = urllib.request.Request(
                f"http://{ip}/v1/chat/completions",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=120) as r:
                assert b"data: [DONE]" in r.read()
            time.sleep(1.5)
        served = f'kaitopy_inference_requests_total{{workspace="{name}"}}'
        wait("requests counted", lambda: prom.query(served), timeout=30)
        end = time.time()
        empty = []
        for panel in dashboards.panels():
            if not panel.needs_model_server:
                continue
            # vLLM's own families (vllm:*) come only from the vLLM engine; this CPU preset runs
            # the transformers engine, so a panel has data when one of its queries does.
            drawn = [prom.query_range(q, start - 5, end, step=1) for q in panel.queries]
            if not any(not math.isnan(float(v)) for series in drawn for s in series for _, v in s["values"]):
                empty.append(f"{panel.title!r}: {panel.queries}")
        assert not empty, "model-server panels without data:\n" + "\n".join(empty)
        png = render.requested("dashboard-model-server")
        if png is not None:
            panels = [p for p in dashboards.panels() if p.needs_model_server]
            title = "kaitopy dashboard, model-server panels: SmolLM2-135M on a real local node"
            print("rendered", render.render(prom, panels, start - 5, end + 2, png, title))
    except BaseException:
        print(prom.logs()[-3000:])
        raise
    finally:
        prom.stop()


def check_node_loss(
    k: Callable[..., str],
    kubectl: list[str],
    name: str,
    namespace: str,
    local_dir: Path,
    node_name: str,
    ip: str,
    question: list[dict[str, str]],
) -> None:
    """The node's whole process group dies while it serves: the Workspace says NodeLost, a
    replacement claim and node come up, the pod follows, and it answers again; nothing of the dead
    node is left."""
    record = json.loads((local_dir / "nodes" / node_name / "node.json").read_text())
    watch = localnodes.Watch([*kubectl, "get", "workspace", name, "-n", namespace])
    try:
        time.sleep(1)  # the watch's first listing
        killed = localnodes.kill_node(local_dir / "nodes" / node_name, node_name, record["index"])
        assert record["pids"]["kubelet"] in killed and record["pids"]["containerd"] in killed, killed
        lost_at = time.monotonic()

        def back() -> bool:
            got = json.loads(k("get", "workspace", name, "-n", namespace, "-o", "json"))
            conds = {c["type"]: c for c in (got.get("status") or {}).get("conditions") or ()}
            now = json.loads((local_dir / "nodes" / node_name / "node.json").read_text())
            return (
                conds["WorkspaceSucceeded"]["status"] == "True" and now["created_at"] > record["created_at"]
            )

        wait("the Workspace Ready on a replacement node", back, timeout=600)
        print(f"back on a replacement node in {time.monotonic() - lost_at:.0f}s")
    finally:
        watch.stop()
    reasons = []
    for obj in watch.seen:
        conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or ()}  # type: ignore[attr-defined]
        c = conds.get("WorkspaceSucceeded") or {}
        reasons.append((c.get("status"), c.get("reason"), c.get("message")))
    lost = [r for r in reasons if r[1] == "NodeLost"]
    assert lost, reasons
    assert lost[0][0] == "False" and node_name in str(lost[0][2]) and "stopped" in str(lost[0][2]), lost
    print("while the node was lost:", sorted({r[1] for r in reasons if r[0] == "False"}))
    # Nothing of the dead node runs any more (its pids may have been reused only by the new node).
    alive = [pid for pid in record["pids"].values() if Path(f"/proc/{pid}").exists()]
    assert all(str(local_dir) in Path(f"/proc/{pid}/cmdline").read_text(errors="replace") for pid in alive)
    completion = post(
        f"http://{ip}/v1/chat/completions",
        {"model": PRESET, "messages": question, "max_tokens": 32, "temperature": 0},
    )
    assert "paris" in str(completion["choices"][0]["message"]["content"]).lower(), completion  # type: ignore[index]


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
