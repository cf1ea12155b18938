"""Least privilege, asked of the real API server: the shipped RBAC (kustomize and Helm) is applied
and each shipped ServiceAccount is checked with `kubectl auth can-i --as` (a SubjectAccessReview).

No ServiceAccount may create, update or delete webhook configurations or CRDs (they ship with the
manifests); the controller may only read and patch its own webhook configuration (the caBundle);
in namespace-scoped mode it may create workloads in its namespaces and nowhere else."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_helm import CHART, helm
from tests.support.cluster import Cluster

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
NAMESPACE = "kaito-system"
CONFIGURATION = "kaitopy-workspace-validation"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}

# (verb, resource) no shipped ServiceAccount may have, whatever the object's name.
FORBIDDEN_EVERYWHERE = [
    (verb, resource)
    for resource in (
        "validatingwebhookconfigurations.admissionregistration.k8s.io",
        "mutatingwebhookconfigurations.admissionregistration.k8s.io",
        "customresourcedefinitions.apiextensions.k8s.io",
    )
    for verb in ("create", "update", "delete", "deletecollection", "patch")
] + [
    ("update", f"validatingwebhookconfigurations.admissionregistration.k8s.io/{CONFIGURATION}"),
    ("delete", f"validatingwebhookconfigurations.admissionregistration.k8s.io/{CONFIGURATION}"),
    ("patch", "validatingwebhookconfigurations.admissionregistration.k8s.io/someone-elses-webhook"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io/workspaces.kaito.sh"),
    ("patch", "customresourcedefinitions.apiextensions.k8s.io/workspaces.kaito.sh"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io/workspaces.kaito.sh"),
]


def can_i(cluster: Cluster, sa: str, verb: str, resource: str, namespace: str | None = None) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as=system:serviceaccount:{NAMESPACE}:{sa}"]
    args += [f"--namespace={namespace}"] if namespace else ["--all-namespaces"]
    out = cluster.kubectl(*args, check=False).strip().splitlines()
    assert out and out[0] in ("yes", "no"), f"kubectl auth can-i {verb} {resource}: {out}"
    return out[0] == "yes"


def rbac_docs(rendered: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(rendered) if d and d.get("kind") in RBAC_KINDS]


@pytest.fixture
def applied(kube_cluster: Cluster) -> Iterator[Any]:
    """Applies the RBAC objects of a rendering (creating the namespaces they name), and removes
    them again so the next rendering starts clean."""
    created: list[str] = []
    namespaces: list[str] = []
    # can-i resolves resource names through discovery: the Workspace kind must be served.
    crd = MANIFESTS / "crds" / "kaito.sh_workspaces.yaml"
    kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/workspaces.kaito.sh")

    def apply(rendered: str) -> list[str]:
        docs = rbac_docs(rendered)
        for ns in sorted({d["metadata"].get("namespace") for d in docs} - {None}):
            if kube_cluster.kubectl("get", "namespace", ns, check=False).find("NotFound") != -1:
                kube_cluster.kubectl("create", "namespace", ns)
                if ns != NAMESPACE:  # the operator's namespace stays, as other tests expect it
                    namespaces.append(ns)
        body = yaml.safe_dump_all(docs)
        kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=body)
        created.append(body)
        return [d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"]

    yield apply
    for body in created:
        kube_cluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=body)
    for ns in namespaces:
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false")


def kustomize(cluster: Cluster, overlay: str) -> str:
    return cluster.kubectl("kustomize", str(MANIFESTS / "overlays" / overlay))


def helm_template(*sets: str) -> str:
    args = [a for s in sets for a in ("--set", s)]
    return helm("template", "kaitopy", str(CHART), "--namespace", NAMESPACE, *args).stdout


def _check_cluster_wide(cluster: Cluster, sas: list[str]) -> None:
    assert {"kaitopy-controller", "kaitopy-provisioner"} <= set(sas)
    for sa in sas:
        for verb, resource in FORBIDDEN_EVERYWHERE:
            assert not can_i(cluster, sa, verb, resource), f"{sa} may {verb} {resource}"
    # The one thing the controller may do to its configuration: read it and patch in the caBundle.
    own = f"validatingwebhookconfigurations.admissionregistration.k8s.io/{CONFIGURATION}"
    assert can_i(cluster, "kaitopy-controller", "get", own)
    assert can_i(cluster, "kaitopy-controller", "patch", own)
    assert not can_i(cluster, "kaitopy-provisioner", "patch", own)
    # The certificate Secret by name; no other Secret of the operator's namespace.
    assert can_i(cluster, "kaitopy-controller", "update", "secrets/kaitopy-webhook-cert", NAMESPACE)
    assert not can_i(cluster, "kaitopy-controller", "get", "secrets/some-other-secret", NAMESPACE)


@pytest.mark.parametrize("source", ["kustomize-kwok", "kustomize-azure", "helm-kwok"])
def test_no_service_account_may_install_webhooks_or_crds(
    kube_cluster: Cluster, applied: Any, source: str
) -> None:
    rendered = (
        helm_template()
        if source == "helm-kwok"
        else kustomize(kube_cluster, source.removeprefix("kustomize-"))
    )
    sas = applied(rendered)
    _check_cluster_wide(kube_cluster, sas)
    # Cluster-wide mode, as documented: the controller may create workloads in any namespace.
    anywhere = f"t-any-{uuid.uuid4().hex[:6]}"
    assert can_i(kube_cluster, "kaitopy-controller", "create", "deployments.apps", anywhere)
    assert can_i(kube_cluster, "kaitopy-controller", "create", "jobs.batch", anywhere)


def _check_namespace_scoped(cluster: Cluster, watched: list[str]) -> None:
    outside = f"t-out-{uuid.uuid4().hex[:6]}"
    for resource in ("deployments.apps", "statefulsets.apps", "jobs.batch", "services"):
        for ns in watched:
            assert can_i(cluster, "kaitopy-controller", "create", resource, ns), f"{resource} in {ns}"
        assert not can_i(cluster, "kaitopy-controller", "create", resource, outside), resource
        assert not can_i(cluster, "kaitopy-controller", "create", resource), f"{resource} cluster-wide"
    for ns in [*watched, outside]:
        assert not can_i(cluster, "kaitopy-controller", "create", "pods", ns)
    assert not can_i(cluster, "kaitopy-controller", "list", "workspaces.kaito.sh")  # no cluster-wide list
    assert can_i(cluster, "kaitopy-controller", "list", "workspaces.kaito.sh", watched[0])


def test_namespace_scoped_helm_controller_acts_only_in_its_namespaces(
    kube_cluster: Cluster, applied: Any
) -> None:
    watched = [f"t-ws-{uuid.uuid4().hex[:6]}", f"t-ws-{uuid.uuid4().hex[:6]}"]
    rendered = helm_template("watchNamespaces={" + ",".join(watched) + "}")
    sas = applied(rendered)
    _check_cluster_wide(kube_cluster, sas)
    _check_namespace_scoped(kube_cluster, watched)
    controller = next(
        d
        for d in yaml.safe_load_all(rendered)
        if d and d["kind"] == "Deployment" and "controller" in d["metadata"]["name"]
    )
    assert (
        f"--watch-namespaces={','.join(watched)}"
        in controller["spec"]["template"]["spec"]["containers"][0]["args"]
    )


def test_namespace_scoped_kustomize_component(kube_cluster: Cluster, applied: Any) -> None:
    sas = applied(kustomize(kube_cluster, "kwok-namespace-scoped"))
    _check_cluster_wide(kube_cluster, sas)
    _check_namespace_scoped(kube_cluster, ["workspaces"])
