"""charts/kaitopy: `helm lint` passes, `helm template` renders for both providers and both node
provisioner modes, the API server accepts what it renders (server-side dry run), and the chart
keeps the RBAC rules and CRDs of manifests/ (one source of truth for what the processes need)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import Cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kaitopy"
NAMESPACE = "kaito-system"
AZURE = {
    "provider": "azure",
    "azure.subscriptionId": "00000000-0000-0000-0000-000000000001",
    "azure.resourceGroup": "rg-gpu",
    "azure.clusterName": "aks-gpu",
    "azure.location": "eastus",
    "azure.tenantId": "00000000-0000-0000-0000-000000000002",
    "azure.workloadIdentityClientId": "00000000-0000-0000-0000-000000000003",
}


def helm_binary() -> str:
    for candidate in (
        os.environ.get("KAITOPY_HELM"),
        str(Path.home() / ".cache" / "kaitopy" / "bin" / "tools" / "helm"),
        shutil.which("helm"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip("no helm: run hack/ensure-helm.sh (make helm-lint does)")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def sets(values: dict[str, str]) -> list[str]:
    return [a for k, v in values.items() for a in ("--set", f"{k}={v}")]


def template(values: dict[str, str] | None = None) -> str:
    return helm("template", "kaitopy", str(CHART), "--namespace", NAMESPACE, *sets(values or {})).stdout


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind_name(items: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in items}


def container(items: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    c: dict[str, Any] = by_kind_name(items)[("Deployment", deployment)]["spec"]["template"]["spec"][
        "containers"
    ][0]
    return c


@pytest.mark.parametrize(
    "values",
    [{}, AZURE, {"nodeProvisioner": "byo"}, {"watchNamespaces": "{team-a,team-b}"}],
    ids=["kwok", "azure", "byo", "namespace-scoped"],
)
def test_helm_lint(values: dict[str, str]) -> None:
    out = helm("lint", "--strict", str(CHART), *sets(values)).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out


@pytest.mark.parametrize("values", [{}, AZURE], ids=["kwok", "azure"])
def test_rendered_chart_is_accepted_by_the_api_server(kube_cluster: Cluster, values: dict[str, str]) -> None:
    rendered = template(values)
    kinds = [d["kind"] for d in docs(rendered)]
    # Six CRDs: RAGEngine and MultiRoleInference ship so that their creates meet our refusal.
    assert kinds.count("CustomResourceDefinition") == 6 and kinds.count("Deployment") == 3
    kube_cluster.kubectl("apply", "--server-side", "-f", str(REPO / "manifests" / "base" / "namespace.yaml"))
    out = kube_cluster.kubectl(
        "apply", "--dry-run=server", "--server-side", "--force-conflicts", "-f", "-", input=rendered
    )
    assert "deployment.apps/kaitopy-controller serverside-applied (server dry run)" in out
    assert "deployment.apps/kaitopy-provisioner serverside-applied (server dry run)" in out
    assert "deployment.apps/kaitopy-activator serverside-applied (server dry run)" in out
    assert "customresourcedefinition.apiextensions.k8s.io/workspaces.kaito.sh serverside-applied" in out


def test_same_rbac_crds_and_objects_as_the_kustomize_base(kube_cluster: Cluster) -> None:
    chart = by_kind_name(docs(template()))
    base = by_kind_name(
        docs(kube_cluster.kubectl("kustomize", str(REPO / "manifests" / "overlays" / "kwok")))
    )
    # Everything the kwok overlay installs, except the Namespace (helm's --create-namespace).
    assert set(chart) == set(base) - {("Namespace", NAMESPACE)}
    for key, obj in base.items():
        if key[0] in ("ClusterRole", "Role"):
            assert chart[key]["rules"] == obj["rules"], key
        if key[0] in ("ClusterRoleBinding", "RoleBinding"):
            assert chart[key]["subjects"] == obj["subjects"] and chart[key]["roleRef"] == obj["roleRef"], key
        if key[0] == "CustomResourceDefinition":
            assert chart[key]["spec"] == obj["spec"], key
            assert chart[key]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        if key[0] in (
            "Service",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
            "PodDisruptionBudget",
            "NetworkPolicy",
        ):
            assert chart[key]["spec"] == obj["spec"], key
        if key[0] == "ValidatingWebhookConfiguration":
            assert chart[key]["webhooks"] == obj["webhooks"], key
        if key[0] == "ConfigMap":  # Kaito's default tuning/inference templates
            assert chart[key]["data"] == obj["data"], key
    for name in ("kaitopy-controller", "kaitopy-provisioner", "kaitopy-activator"):
        ours, theirs = container(list(chart.values()), name), container(list(base.values()), name)
        assert set(theirs["args"]) <= set(ours["args"]), name
        assert ours["securityContext"] == theirs["securityContext"]
        assert ours["resources"] == theirs["resources"]
        assert chart[("Deployment", name)]["spec"]["template"]["spec"].get("affinity") == (
            base[("Deployment", name)]["spec"]["template"]["spec"].get("affinity")
        ), name


def test_image_tag_defaults_to_the_pyproject_version() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version and chart["version"] == version
    items = docs(template())
    assert container(items, "kaitopy-controller")["image"] == f"ghcr.io/kaitopy/controller:{version}"
    tagged = docs(template({"image.repository": "example.io/k", "image.tag": "dev"}))
    assert container(tagged, "kaitopy-provisioner")["image"] == "example.io/k:dev"


def test_azure_values_reach_the_provisioner() -> None:
    items = docs(template(AZURE))
    objs = by_kind_name(items)
    env = {e["name"]: e.get("value") for e in container(items, "kaitopy-provisioner")["env"]}
    assert env["KAITOPY_CLOUD_PROVIDER"] == "azure"
    assert env["ARM_SUBSCRIPTION_ID"] == AZURE["azure.subscriptionId"]
    assert env["ARM_RESOURCE_GROUP"] == "rg-gpu" and env["AZURE_CLUSTER_NAME"] == "aks-gpu"
    assert env["LOCATION"] == "eastus" and env["AZURE_CLIENT_ID"] == AZURE["azure.workloadIdentityClientId"]
    sa = objs[("ServiceAccount", "kaitopy-provisioner")]
    assert (
        sa["metadata"]["annotations"]["azure.workload.identity/client-id"]
        == AZURE["azure.workloadIdentityClientId"]
    )
    pod = objs[("Deployment", "kaitopy-provisioner")]["spec"]["template"]["metadata"]
    assert pod["labels"]["azure.workload.identity/use"] == "true"


def test_azure_without_its_settings_fails_with_what_to_set() -> None:
    proc = helm("template", "k", str(CHART), "--set", "provider=azure", check=False)
    assert proc.returncode != 0 and "provider=azure needs azure.subscriptionId" in proc.stderr
    proc = helm("template", "k", str(CHART), "--set", "provider=gcp", check=False)
    assert proc.returncode != 0 and 'provider must be kwok or azure, not "gcp"' in proc.stderr


def test_switches() -> None:
    byo = docs(template({"nodeProvisioner": "byo"}))
    names = set(by_kind_name(byo))
    assert ("Deployment", "kaitopy-provisioner") not in names
    assert ("ClusterRole", "kaitopy-provisioner") not in names
    assert "--node-provisioner=byo" in container(byo, "kaitopy-controller")["args"]

    quiet = docs(
        template(
            {
                "webhook.enabled": "false",
                "installCRDs": "false",
                "leaderElection.enabled": "false",
                "controller.replicas": "1",
                "provisioner.replicas": "1",
            }
        )
    )
    assert ("Service", "kaitopy-webhook") not in set(by_kind_name(quiet))
    assert not [d for d in quiet if d["kind"] == "CustomResourceDefinition"]
    args = container(quiet, "kaitopy-controller")["args"]
    assert {"--no-webhook", "--no-install-crds", "--no-leader-elect"} <= set(args)
    assert "--no-install-crds" in container(quiet, "kaitopy-provisioner")["args"]

    proc = helm("template", "k", str(CHART), "--set", "leaderElection.enabled=false", check=False)
    assert proc.returncode != 0 and "more than one replica needs leaderElection.enabled=true" in proc.stderr

    sized = docs(template({"controller.resources.limits.memory": "3Gi"}))
    assert container(sized, "kaitopy-controller")["resources"]["limits"]["memory"] == "3Gi"


def test_chart_crds_are_the_generated_ones() -> None:
    ours = sorted(p.name for p in (CHART / "files" / "crds").glob("*.yaml"))
    generated = sorted(
        p.name for p in (REPO / "manifests" / "crds").glob("*.yaml") if p.name != "kustomization.yaml"
    )
    assert ours == generated
    for name in ours:
        assert (CHART / "files" / "crds" / name).read_bytes() == (
            REPO / "manifests" / "crds" / name
        ).read_bytes(), f"charts/kaitopy/files/crds/{name} differs from manifests/crds: run make manifests"


def test_service_monitors_behind_their_switch_match_the_kustomize_component(kube_cluster: Cluster) -> None:
    assert not [d for d in docs(template()) if d["kind"] == "ServiceMonitor"]
    items = docs(template({"serviceMonitor.enabled": "true"}))
    monitors = {d["metadata"]["name"]: d for d in items if d["kind"] == "ServiceMonitor"}
    component = {
        d["metadata"]["name"]: d
        for d in docs(
            kube_cluster.kubectl("kustomize", str(REPO / "manifests" / "overlays" / "kwok-servicemonitor"))
        )
        if d["kind"] == "ServiceMonitor"
    }
    # The same monitors as manifests/components/servicemonitor, the activator's among them.
    assert (
        sorted(monitors)
        == sorted(component)
        == ["kaitopy-activator", "kaitopy-controller", "kaitopy-provisioner"]
    )
    for name, monitor in monitors.items():
        assert monitor["spec"] == component[name]["spec"], name
        # It selects exactly one Service of the chart, on a port that Service has and whose target
        # is a named port of the process's container (where /metrics is served).
        spec = monitor["spec"]
        port = spec["endpoints"][0]["port"]
        (service,) = [
            d
            for d in items
            if d["kind"] == "Service"
            and all(
                (d["metadata"].get("labels") or {}).get(k) == v
                for k, v in spec["selector"]["matchLabels"].items()
            )
            and any(p["name"] == port for p in d["spec"]["ports"])
        ]
        (target,) = [p["targetPort"] for p in service["spec"]["ports"] if p["name"] == port]
        assert target in {p["name"] for p in container(items, name)["ports"]}, name
    # Without a provisioner (byo) there is no provisioner monitor.
    byo = docs(template({"serviceMonitor.enabled": "true", "nodeProvisioner": "byo"}))
    assert sorted(d["metadata"]["name"] for d in byo if d["kind"] == "ServiceMonitor") == [
        "kaitopy-activator",
        "kaitopy-controller",
    ]
