"""Every shipped manifest is accepted by a real API server (server-side validation, dry run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cluster import Cluster

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


@pytest.mark.parametrize("overlay", ["kwok", "azure"])
def test_overlay_renders_and_validates(kube_cluster: Cluster, overlay: str) -> None:
    rendered = kube_cluster.kubectl("kustomize", str(MANIFESTS / "overlays" / overlay))
    kinds = [line.split(":", 1)[1].strip() for line in rendered.splitlines() if line.startswith("kind:")]
    # workspaces, inferencesets, nodeclaims, nodeclasses, and ragengines, multiroleinferences (refused)
    assert kinds.count("CustomResourceDefinition") == 6
    assert {"Deployment", "ClusterRole", "ServiceAccount", "Service"} <= set(kinds)
    # A dry run creates nothing, so the namespaced objects need their namespace to exist already.
    kube_cluster.kubectl("apply", "--server-side", "-f", str(MANIFESTS / "base" / "namespace.yaml"))
    out = kube_cluster.kubectl(
        "apply", "--dry-run=server", "--server-side", "--force-conflicts", "-f", "-", input=rendered
    )
    assert "deployment.apps/kaitopy-controller serverside-applied (server dry run)" in out
    assert "deployment.apps/kaitopy-provisioner serverside-applied (server dry run)" in out
