"""`make deploy PROVIDER=kwok CLUSTER=local`: the shipped overlay applied to the local control
plane, the operator's Deployments running as real pods (from the controller image built from
docker/controller) on a real local node, under their own service accounts and security contexts,
and the phi-3 example brought to WorkspaceSucceeded; then `make undeploy` removes it all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.cluster import Cluster

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "inference" / "kaito_workspace_phi_3.yaml"


def deploy_local(kube: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAITOPY_CLUSTER_DIR": str(kube.kubeconfig.parent)}
    return subprocess.run(
        [sys.executable, str(REPO / "hack" / "deploy_local.py"), *args],
        capture_output=True,
        text=True,
        timeout=1800,  # a cold image build comes first
        env=env,
    )


def writers(audit_log: Path, since: int, resource: str, subresource: str, namespace: str) -> set[str]:
    """Who wrote `resource` in the audit log after byte offset `since` (this test's requests)."""
    found = set()
    with audit_log.open() as f:
        f.seek(since)
        lines = f.read().splitlines()
    for line in lines:
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if (
            ref.get("resource") == resource
            and ref.get("subresource", "") == subresource
            and ref.get("namespace", "") == namespace
            and event.get("verb") in ("patch", "update", "create")
            and event.get("responseStatus", {}).get("code", 0) < 300
        ):
            found.add(event["user"]["username"])
    return found


def test_deploy_local_brings_phi3_to_ready_as_the_manifests_run_it(
    kube_cluster: Cluster, tmp_path: Path, namespace: str
) -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    example["metadata"]["namespace"] = namespace
    example_path = tmp_path / "phi3.yaml"
    example_path.write_text(yaml.safe_dump(example))
    name = example["metadata"]["name"]

    audit = kube_cluster.kubeconfig.parent / "logs" / "audit.log"
    since = audit.stat().st_size
    up = deploy_local(kube_cluster, "up", "--example", str(example_path))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"workspace {name} succeeded" in up.stdout
        pods = json.loads(kube_cluster.kubectl("get", "pods", "-n", "kaito-system", "-o", "json"))["items"]
        by_app = {p["metadata"]["labels"]["app.kubernetes.io/name"] for p in pods}
        assert by_app == {"kaitopy-controller", "kaitopy-provisioner", "kaitopy-activator"}
        node = json.loads(kube_cluster.kubectl("get", "node", "kaitopy-system", "-o", "json"))
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
        for pod in pods:
            pod_name = pod["metadata"]["name"]
            assert pod["spec"]["nodeName"] == "kaitopy-system"
            # Ready means the real readiness probe on /readyz passed.
            assert any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"]["conditions"])
            image = pod["spec"]["containers"][0]["image"]
            assert "/kaitopy/controller@sha256:" in image
            args = pod["spec"]["containers"][0]["args"]
            assert "--log-format=json" in args
            # The activator serves from every replica: no election.
            assert ("--leader-elect" in args) == (args[0] != "activator"), args
            # The container's security context as shipped: non-root, read-only root, /tmp writable.
            probe = (
                "id -u; touch /probe 2>/dev/null && echo root-writable; touch /tmp/probe && echo tmp-writable"
            )
            out = kube_cluster.kubectl("exec", "-n", "kaito-system", pod_name, "--", "sh", "-c", probe)
            assert out.split() == ["65532", "tmp-writable"], (pod_name, out)
        # Authenticated as the manifests' service accounts, not as the admin.
        assert writers(audit, since, "workspaces", "status", namespace) == {
            "system:serviceaccount:kaito-system:kaitopy-controller"
        }
        assert writers(audit, since, "nodeclaims", "status", "") == {
            "system:serviceaccount:kaito-system:kaitopy-provisioner"
        }
        printed = kube_cluster.kubectl("get", "workspace", name, "-n", namespace)
        assert printed.splitlines()[1].split()[:4] == [name, "Standard_NC6s_v3", "True", "True"]
    finally:
        down = deploy_local(kube_cluster, "down", "--example", str(example_path))
    assert down.returncode == 0, down.stdout + down.stderr
    assert kube_cluster.kubectl("get", "workspace", name, "-n", namespace, "--ignore-not-found").strip() == ""
    sel = f"kaito.sh/workspacenamespace={namespace}"
    assert kube_cluster.kubectl("get", "nodeclaims", "-l", sel, "-o", "name").strip() == ""
    assert kube_cluster.kubectl("get", "nodes", "-l", sel, "-o", "name").strip() == ""
    assert kube_cluster.kubectl("get", "node", "kaitopy-system", "--ignore-not-found").strip() == ""
    assert kube_cluster.kubectl("get", "pods", "-n", "kaito-system", "-o", "name").strip() == ""
