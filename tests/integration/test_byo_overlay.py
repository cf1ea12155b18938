"""manifests/overlays/byo: the controller in bring-your-own-nodes mode without the provisioner,
accepted by the API server (server-side dry run)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.support.cluster import Cluster

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


def test_byo_overlay(kube_cluster: Cluster) -> None:
    rendered = kube_cluster.kubectl("kustomize", str(MANIFESTS / "overlays" / "byo"))
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert not [n for n in names if "provisioner" in n[1]], names
    # The controller watches NodeClaims in every mode: their CRD must stay.
    assert ("CustomResourceDefinition", "nodeclaims.karpenter.sh") in names
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {"kaitopy-controller", "kaitopy-activator"}, set(deployments)
    controller = deployments["kaitopy-controller"]
    assert "--node-provisioner=byo" in controller["spec"]["template"]["spec"]["containers"][0]["args"]
    # A dry run creates no namespace, and the namespaced objects need it.
    kube_cluster.kubectl("apply", "--server-side", "-f", str(MANIFESTS / "base" / "namespace.yaml"))
    out = kube_cluster.kubectl(
        "apply", "--dry-run=server", "--server-side", "--force-conflicts", "-f", "-", input=rendered
    )
    assert "deployment.apps/kaitopy-controller serverside-applied (server dry run)" in out
