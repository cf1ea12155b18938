"""Real nodes on this machine: the `local` provider turns a NodeClaim into a kubelet with its own
containerd; a pod with an init container, an emptyDir and a readiness probe really runs there,
its Service answers through kube-proxy, pods cannot route off the machine, and deleting the claim
leaves no process, mount, network namespace, cgroup, bridge or file behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.operator import Operator
from tests.support import localnodes
from tests.support.cluster import Cluster
from tests.support.localnodes import wait

INSTANCE_TYPE = "Standard_NC6s_v3"  # one V100: the node advertises nvidia.com/gpu: 1


@pytest.fixture(scope="module")
def images() -> localnodes.LocalImages:
    return localnodes.ensure_images("pause", "tools")


@pytest.fixture
def local_operator(
    operator: Operator, kube_cluster: Cluster, images: localnodes.LocalImages, tmp_path: Path
) -> tuple[Operator, Path]:
    assert kube_cluster.bin_dir is not None, "the local provider needs the local control plane's binaries"
    local_dir = tmp_path / "nodes"
    operator.start_local_provisioner(
        local_dir, kube_cluster.kubeconfig.parent, kube_cluster.bin_dir, images.refs["pause"], images.registry
    )
    return operator, local_dir


def nodeclaim(name: str) -> dict[str, object]:
    return {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodeClaim",
        "metadata": {"name": name, "labels": {"kaito.sh/workspace": "e2e-local"}},
        "spec": {
            "nodeClassRef": {"group": "kaito.sh", "kind": "KaitoNodeClass", "name": "default"},
            "requirements": [
                {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": [INSTANCE_TYPE]}
            ],
            "resources": {"requests": {"nvidia.com/gpu": "1"}},
            "taints": [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}],
        },
    }


def web_pod(namespace: str, node: str, tools: str) -> dict[str, object]:
    """busybox httpd serving a page an init container wrote into an emptyDir; Ready only once
    the readiness probe has really fetched it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": namespace, "labels": {"app": "web"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "terminationGracePeriodSeconds": 2,  # busybox httpd as PID 1 ignores SIGTERM
            "tolerations": [{"key": "sku", "operator": "Exists", "effect": "NoSchedule"}],
            "initContainers": [
                {
                    "name": "write",
                    "image": tools,
                    "command": ["/bin/busybox", "sh", "-c", "echo hello-from-a-real-pod > /www/index.html"],
                    "volumeMounts": [{"name": "www", "mountPath": "/www"}],
                }
            ],
            "containers": [
                {
                    "name": "web",
                    "image": tools,
                    "command": ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/index.html", "port": 8080}, "periodSeconds": 1},
                    "resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}},
                    "volumeMounts": [{"name": "www", "mountPath": "/www"}],
                }
            ],
            "volumes": [{"name": "www", "emptyDir": {}}],
        },
    }


def test_a_nodeclaim_becomes_a_real_node_that_runs_pods_and_leaves_nothing_when_deleted(
    local_operator: tuple[Operator, Path],
    kube_cluster: Cluster,
    images: localnodes.LocalImages,
    namespace: str,
) -> None:
    _, local_dir = local_operator
    k = kube_cluster.kubectl
    name = f"nc{uuid.uuid4().hex[:9]}"
    netns_before = localnodes.netns()
    k("apply", "-f", "-", input=json.dumps(nodeclaim(name)))
    try:
        check_the_node(k, name, namespace, images, local_dir, netns_before)
    finally:
        # Even after a failure, while the provisioner still runs: its finalizer tears the node down.
        k("delete", "nodeclaim", name, "--ignore-not-found", "--wait=false", check=False)
        wait("the NodeClaim to be gone", lambda: "NotFound" in k("get", "nodeclaim", name, check=False), 180)


def check_the_node(
    k: Callable[..., str],
    name: str,
    namespace: str,
    images: localnodes.LocalImages,
    local_dir: Path,
    netns_before: set[str],
) -> None:
    def node_ready() -> dict[str, object] | None:
        out = k("get", "node", name, "-o", "json", check=False)
        if not out.startswith("{"):
            return None
        node = json.loads(out)
        ready = any(
            c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", [])
        )
        return node if ready and node["status"].get("allocatable", {}).get("nvidia.com/gpu") == "1" else None

    node = wait("the local node to be Ready with its GPU advertised", node_ready)
    info = node["status"]["nodeInfo"]  # type: ignore[index]
    assert info["containerRuntimeVersion"].startswith("containerd://")
    assert node["metadata"]["labels"]["node.kubernetes.io/instance-type"] == INSTANCE_TYPE  # type: ignore[index]
    address = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")  # type: ignore[index]
    assert address.startswith("10.230.")
    wait(
        "the NodeClaim to be Initialized",
        lambda: any(
            c["type"] == "Initialized" and c["status"] == "True"
            for c in json.loads(k("get", "nodeclaim", name, "-o", "json"))["status"].get("conditions", [])
        ),
    )
    claim = json.loads(k("get", "nodeclaim", name, "-o", "json"))
    assert claim["status"].get("providerID") == f"local://{name}"

    k("apply", "-f", "-", input=json.dumps(web_pod(namespace, name, images.refs["tools"])))
    k("expose", "pod", "web", "-n", namespace, "--port=80", "--target-port=8080")
    pod = wait(
        "the pod to pass its readiness probe",
        lambda: (
            (p := json.loads(k("get", "pod", "web", "-n", namespace, "-o", "json")))
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
            and p
        ),
        timeout=300,
    )
    assert pod["status"]["podIP"].startswith("10.230.")
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0

    # Through the Service: the ClusterIP is only reachable because kube-proxy programmed it.
    cluster_ip = k("get", "service", "web", "-n", namespace, "-o", "jsonpath={.spec.clusterIP}").strip()

    def fetch() -> str:
        with urllib.request.urlopen(f"http://{cluster_ip}/index.html", timeout=2) as r:
            return r.read().decode()

    assert wait("the Service to answer", lambda: "hello-from-a-real-pod" in fetch(), timeout=60)

    # Cluster DNS: the Service by its full name and by the search path, from inside the pod; a
    # name outside the cluster is refused (nothing is forwarded off the machine).
    def lookup(name: str) -> str:
        return k("exec", "-n", namespace, "web", "--", "/bin/busybox", "nslookup", name, check=False)

    full = f"web.{namespace}.svc.cluster.local"
    assert cluster_ip in wait(
        "the cluster DNS to know the Service", lambda: cluster_ip in lookup(full) and lookup(full)
    )
    resolv = k("exec", "-n", namespace, "web", "--", "/bin/busybox", "cat", "/etc/resolv.conf")
    assert "nameserver 10.229.253.1" in resolv and f"search {namespace}.svc.cluster.local" in resolv, resolv
    # `web.<namespace>` through the search path (plain `web` is the pod's own name, in its /etc/hosts).
    page = k(
        "exec", "-n", namespace, "web", "--", "/bin/busybox", "wget", "-qO-", f"http://web.{namespace}/index.html"
    )  # fmt: skip
    assert "hello-from-a-real-pod" in page
    outside = lookup("pypi.org.")
    assert "REFUSED" in outside or "can't find" in outside, outside

    # The pod has routes to the pod network and the Service range only: no way off the machine.
    routes = k("exec", "-n", namespace, "web", "--", "/bin/busybox", "ip", "route")
    assert "default" not in routes, routes
    assert "10.230.0.0/16" in routes and "10.96.0.0/16" in routes
    # And the host drops anything forwarded from the pod network to outside it (checked as a
    # rule, never by sending a packet to an address off the machine).
    guard = subprocess.run(
        ["iptables", "-w", "-C", "FORWARD", "-s", "10.230.0.0/16", "-j", "KAITOPY-EGRESS"], check=False
    )
    assert guard.returncode == 0
    rules = subprocess.run(["iptables", "-w", "-S", "KAITOPY-EGRESS"], capture_output=True, text=True).stdout
    assert "-d 10.230.0.0/16 -j RETURN" in rules and "-A KAITOPY-EGRESS -j DROP" in rules

    node_root = local_dir / "nodes" / name
    bridge = f"kpbr{json.loads((node_root / 'node.json').read_text())['index']}"
    assert localnodes.leftovers(node_root, name, bridge), "the live node should be visible to the leak check"

    k("delete", "nodeclaim", name, "--wait=false")
    wait(
        "the NodeClaim to be gone",
        lambda: "NotFound" in k("get", "nodeclaim", name, check=False),
        timeout=180,
    )
    wait("the Node object to be gone", lambda: "NotFound" in k("get", "node", name, check=False), timeout=60)
    assert localnodes.leftovers(node_root, name, bridge) == []
    assert localnodes.netns() - netns_before == set()
    # The last node took the machine-wide parts with it: kube-proxy's and the cluster DNS's state.
    assert not Path("/sys/class/net/kpdns0").exists()
    assert not Path("/run/kaitopy/cluster-dns").exists() and not Path("/run/kaitopy/kube-proxy").exists()


def test_a_node_that_stays_not_ready_while_its_instance_runs_is_replaced(
    operator: Operator, kube_cluster: Cluster, images: localnodes.LocalImages, tmp_path: Path
) -> None:
    """Node repair: the kubelet hangs (SIGSTOP: the process, and so the provider's instance, is
    still there), the node goes NotReady, and after the repair toleration the provisioner gives
    the claim up (Ready=False NodeUnhealthy, a Warning event), skips the drain and tears the node
    down completely, even with its kubelet stopped."""
    assert kube_cluster.bin_dir is not None
    local_dir = tmp_path / "nodes"
    operator.start_local_provisioner(
        local_dir,
        kube_cluster.kubeconfig.parent,
        kube_cluster.bin_dir,
        images.refs["pause"],
        images.registry,
        "--node-repair-after=5",
    )
    k = kube_cluster.kubectl
    name = f"nc{uuid.uuid4().hex[:9]}"
    k("apply", "-f", "-", input=json.dumps(nodeclaim(name)))
    node_root = local_dir / "nodes" / name
    kubelet = 0
    try:
        wait(
            "the NodeClaim to be Initialized",
            lambda: any(
                c["type"] == "Initialized" and c["status"] == "True"
                for c in (json.loads(k("get", "nodeclaim", name, "-o", "json")).get("status") or {}).get(
                    "conditions", []
                )
            ),
            timeout=300,
        )
        record = json.loads((node_root / "node.json").read_text())
        bridge = f"kpbr{record['index']}"
        kubelet = int(record["pids"]["kubelet"])
        os.kill(kubelet, signal.SIGSTOP)
        # What the node lifecycle controller writes once the kubelet's heartbeats stop: this
        # control plane gives nodes 360 s of grace (kwok at scale), too long for a test, so the
        # test writes it; the stopped kubelet cannot overwrite it.
        k(
            "patch", "node", name, "--subresource=status", "--type=strategic", "-p",
            json.dumps({"status": {"conditions": [{
                "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status.",
            }]}}),
        )  # fmt: skip

        def given_up() -> dict[str, object] | None:
            out = k("get", "nodeclaim", name, "-o", "json", check=False)
            if not out.startswith("{"):
                return {"reason": "gone before we looked"}
            ready = next(
                (c for c in json.loads(out)["status"].get("conditions", []) if c["type"] == "Ready"), {}
            )
            return ready if ready.get("reason") == "NodeUnhealthy" else None

        ready = wait("the claim to be given up as unhealthy", given_up, timeout=60, interval=0.5)
        assert ready is not None
        if ready.get("reason") == "NodeUnhealthy":
            assert ready["status"] == "False"
            assert "Ready=Unknown: Kubelet stopped posting node status." in str(ready["message"]), ready
            assert "while its instance still runs" in str(ready["message"]), ready
        events = k(
            "get", "events", "-A", "--field-selector", f"involvedObject.name={name},reason=NodeUnhealthy",
            "-o", "jsonpath={.items[*].message}",
        )  # fmt: skip
        assert "NotReady" in events, events
        wait("the NodeClaim to be gone", lambda: "NotFound" in k("get", "nodeclaim", name, check=False), 120)
        wait("the Node object to be gone", lambda: "NotFound" in k("get", "node", name, check=False), 60)
        assert localnodes.leftovers(node_root, name, bridge) == []
    finally:
        if kubelet:
            with contextlib.suppress(ProcessLookupError):
                os.kill(kubelet, signal.SIGCONT)
        k("delete", "nodeclaim", name, "--ignore-not-found", "--wait=false", check=False)
        wait("the NodeClaim to be gone", lambda: "NotFound" in k("get", "nodeclaim", name, check=False), 180)
