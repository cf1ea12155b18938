"""Least privilege, asked of the real API server: the shipped RBAC (kustomize and Helm) is applied
and each shipped ServiceAccount is checked with `kubectl auth can-i --as` (a SubjectAccessReview).

No ServiceAccount may create, update or delete webhook configurations or CRDs (they ship with the
manifests); the controller may only read and patch its own webhook configuration (the caBundle);
in namespace-scoped mode it may create workloads in its namespaces and nowhere else."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
    """`resource` as kubectl names it (`kind.group[/name]`), with `:subresource` appended for one."""
    resource, _, subresource = resource.partition(":")
    args = ["auth", "can-i", verb, resource, f"--as=system:serviceaccount:{NAMESPACE}:{sa}"]
    args += [f"--subresource={subresource}"] if subresource else []
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
    for kind in ("workspaces", "inferencesets"):
        crd = MANIFESTS / "crds" / f"kaito.sh_{kind}.yaml"
        kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
        kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{kind}.kaito.sh")

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


Check = tuple[bool, str, str, str, str | None]
"""(expected answer, ServiceAccount, verb, resource, namespace or None for all namespaces)."""


def assert_answers(cluster: Cluster, checks: list[Check]) -> None:
    """Asks every question (in parallel: each is a kubectl run) and reports every wrong answer."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda c: can_i(cluster, c[1], c[2], c[3], c[4]), checks))
    wrong = [
        f"{sa} {'may not' if expected else 'may'} {verb} {resource} in {ns or 'all namespaces'}"
        for (expected, sa, verb, resource, ns), got in zip(checks, answers, strict=True)
        if got != expected
    ]
    assert not wrong, "\n".join(wrong)


# The activator: reads sets and Workspaces, moves a set's replicas (the scale subresource) and writes
# Leases in the operator's namespace; nothing that changes what a set or Workspace runs.
ACTIVATOR = "kaitopy-activator"
ACTIVATOR_CHECKS: list[Check] = [
    (True, ACTIVATOR, "list", "inferencesets.kaito.sh", None),
    (True, ACTIVATOR, "watch", "workspaces.kaito.sh", None),
    (True, ACTIVATOR, "patch", "inferencesets.kaito.sh:scale", None),
    (False, ACTIVATOR, "update", "inferencesets.kaito.sh:scale", None),
    (False, ACTIVATOR, "patch", "inferencesets.kaito.sh", None),
    (False, ACTIVATOR, "update", "inferencesets.kaito.sh", None),
    (False, ACTIVATOR, "patch", "inferencesets.kaito.sh:status", None),
    (False, ACTIVATOR, "create", "workspaces.kaito.sh", None),
    (False, ACTIVATOR, "patch", "workspaces.kaito.sh", None),
    (False, ACTIVATOR, "delete", "workspaces.kaito.sh", None),
    (False, ACTIVATOR, "create", "pods", None),
    (False, ACTIVATOR, "get", "secrets", None),
    (False, ACTIVATOR, "get", "pods", None),
    (False, ACTIVATOR, "create", "services", None),
    (True, ACTIVATOR, "create", "leases.coordination.k8s.io", NAMESPACE),
    (True, ACTIVATOR, "patch", "leases.coordination.k8s.io", NAMESPACE),
    (False, ACTIVATOR, "delete", "leases.coordination.k8s.io", NAMESPACE),
    (False, ACTIVATOR, "create", "leases.coordination.k8s.io", "default"),
]


def _cluster_wide(sas: list[str]) -> list[Check]:
    assert {"kaitopy-controller", "kaitopy-provisioner", ACTIVATOR} <= set(sas)
    checks: list[Check] = [
        (False, sa, verb, resource, None) for sa in sas for verb, resource in FORBIDDEN_EVERYWHERE
    ]
    # The one thing the controller may do to its configuration: read it and patch in the caBundle.
    own = f"validatingwebhookconfigurations.admissionregistration.k8s.io/{CONFIGURATION}"
    return [
        *checks,
        (True, "kaitopy-controller", "get", own, None),
        (True, "kaitopy-controller", "patch", own, None),
        (False, "kaitopy-provisioner", "patch", own, None),
        # The certificate Secret by name; no other Secret of the operator's namespace.
        (True, "kaitopy-controller", "update", "secrets/kaitopy-webhook-cert", NAMESPACE),
        (False, "kaitopy-controller", "get", "secrets/some-other-secret", NAMESPACE),
        *ACTIVATOR_CHECKS,
    ]


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
    # Cluster-wide mode, as documented: the controller may create workloads in any namespace.
    anywhere = f"t-any-{uuid.uuid4().hex[:6]}"
    assert_answers(
        kube_cluster,
        [
            *_cluster_wide(sas),
            (True, "kaitopy-controller", "create", "deployments.apps", anywhere),
            (True, "kaitopy-controller", "create", "jobs.batch", anywhere),
        ],
    )


def _namespace_scoped(watched: list[str]) -> list[Check]:
    outside = f"t-out-{uuid.uuid4().hex[:6]}"
    checks: list[Check] = []
    for resource in ("deployments.apps", "statefulsets.apps", "jobs.batch", "services"):
        checks += [(True, "kaitopy-controller", "create", resource, ns) for ns in watched]
        checks += [
            (False, "kaitopy-controller", "create", resource, outside),
            (False, "kaitopy-controller", "create", resource, None),
        ]
    checks += [(False, "kaitopy-controller", "create", "pods", ns) for ns in [*watched, outside]]
    return [
        *checks,
        (False, "kaitopy-controller", "list", "workspaces.kaito.sh", None),  # no cluster-wide list
        (True, "kaitopy-controller", "list", "workspaces.kaito.sh", watched[0]),
    ]


def test_namespace_scoped_helm_controller_acts_only_in_its_namespaces(
    kube_cluster: Cluster, applied: Any
) -> None:
    watched = [f"t-ws-{uuid.uuid4().hex[:6]}", f"t-ws-{uuid.uuid4().hex[:6]}"]
    rendered = helm_template("watchNamespaces={" + ",".join(watched) + "}")
    sas = applied(rendered)
    assert_answers(kube_cluster, [*_cluster_wide(sas), *_namespace_scoped(watched)])
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
    assert_answers(kube_cluster, [*_cluster_wide(sas), *_namespace_scoped(["workspaces"])])
