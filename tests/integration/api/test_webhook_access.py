"""A Workspace author gains no right through us, on the real API server: a user (impersonated with
kubectl --as) who may create Workspaces but not pods, or not read a Secret, is refused a template /
a Secret reference by the webhook; granted those rights, the same Workspace is admitted."""

from __future__ import annotations

import asyncio
import copy
import subprocess
import time
from typing import Any

import yaml

from kaitopy.runtime import Client, Kind, kinds
from kaitopy.webhooks.server import WebhookServer
from tests.integration.api.conftest import REPO, kubectl_apply, phi3, tuning
from tests.support.cluster import Cluster

ROLE = Kind("rbac.authorization.k8s.io", "v1", "Role", "roles")
ROLE_BINDING = Kind("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings")
USER = "alice"
TEMPLATE = {"spec": {"containers": [{"name": "m", "image": "registry.example.com/m:1"}]}}


async def _grant(client: Client, namespace: str, name: str, rule: dict[str, Any]) -> None:
    await client.create(
        ROLE, {"metadata": {"name": name, "namespace": namespace}, "rules": [rule]}, namespace=namespace
    )
    await client.create(
        ROLE_BINDING,
        {
            "metadata": {"name": name, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
        },
        namespace=namespace,
    )


async def _create_as_user(cluster: Cluster, namespace: str, doc: dict[str, Any]) -> tuple[int, str]:
    # kubectl in a thread: this loop serves the webhook the API server calls meanwhile.
    proc = await asyncio.to_thread(kubectl_apply, cluster, namespace, doc, verb="create", as_user=USER)
    return proc.returncode, proc.stderr


async def _admitted_eventually(cluster: Cluster, namespace: str, doc: dict[str, Any]) -> None:
    # RBAC reaches the authorizer through an informer: a fresh grant may take a moment.
    deadline = time.monotonic() + 30
    while True:
        rc, err = await _create_as_user(cluster, namespace, doc)
        if rc == 0:
            return
        assert time.monotonic() < deadline, err
        await asyncio.sleep(0.5)


async def _author(client: Client, namespace: str) -> None:
    await _grant(
        client,
        namespace,
        "ws-author",
        {"apiGroups": ["kaito.sh"], "resources": ["workspaces"], "verbs": ["create"]},
    )


def _templated(name: str) -> dict[str, Any]:
    doc = phi3(name)
    doc["inference"] = {"template": TEMPLATE}
    return doc


async def test_template_needs_the_right_to_create_pods(
    webhook: WebhookServer, workspace_crd: Cluster, namespace: str
) -> None:
    client = webhook.client
    await _author(client, namespace)
    # The author may create workspaces: a preset is admitted (so the refusal below is the template's).
    await _admitted_eventually(workspace_crd, namespace, phi3("preset"))
    rc, err = await _create_as_user(workspace_crd, namespace, _templated("custom"))
    assert rc != 0
    assert (
        f"inference.template: user {USER} may not create pods in namespace {namespace}; a template runs "
        "a pod of your own design, so it needs that right (ask for it, or use a preset)"
    ) in err
    await _grant(
        client, namespace, "pod-maker", {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}
    )
    await _admitted_eventually(workspace_crd, namespace, _templated("custom"))


async def test_secret_reference_needs_the_right_to_read_that_secret(
    webhook: WebhookServer, workspace_crd: Cluster, namespace: str
) -> None:
    client = webhook.client
    await _author(client, namespace)
    rc, err = await _create_as_user(workspace_crd, namespace, tuning())
    assert rc != 0
    assert (
        f"tuning.output.imagePushSecret: user {USER} may not get secrets 'push' in namespace {namespace}; "
        "the workload reads that Secret, so it needs that right (ask for it, or name one you may read)"
    ) in err
    # Rights to another Secret do not help: the check is per name.
    await _grant(
        client,
        namespace,
        "other-secret",
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["other"]},
    )
    rc, err = await _create_as_user(workspace_crd, namespace, tuning())
    assert rc != 0 and "tuning.output.imagePushSecret" in err
    await _grant(
        client,
        namespace,
        "push-secret",
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["push"]},
    )
    await _admitted_eventually(workspace_crd, namespace, tuning())


async def test_while_the_webhook_is_down_a_template_change_is_refused_and_metadata_passes(
    webhook: WebhookServer, workspace_crd: Cluster, namespace: str
) -> None:
    doc = _templated("custom")
    proc = await asyncio.to_thread(kubectl_apply, workspace_crd, namespace, doc, verb="create")
    assert proc.returncode == 0, proc.stderr
    await webhook.stop()  # its configuration stays, pointing at a closed port
    changed = copy.deepcopy(doc)
    changed["inference"]["template"]["spec"]["containers"][0]["image"] = "registry.example.com/other:1"
    proc = await asyncio.to_thread(kubectl_apply, workspace_crd, namespace, changed)
    assert proc.returncode != 0 and "failed calling webhook" in proc.stderr, proc.stderr
    # Finalizers and labels never wait for the webhook.
    workspace_crd.kubectl("-n", namespace, "label", "workspace", "custom", "touched=yes")
    workspace_crd.kubectl(
        "-n",
        namespace,
        "patch",
        "workspace",
        "custom",
        "--type=merge",
        "-p",
        '{"metadata":{"finalizers":["x/y"]}}',
    )
    workspace_crd.kubectl(
        "-n",
        namespace,
        "patch",
        "workspace",
        "custom",
        "--type=merge",
        "-p",
        '{"metadata":{"finalizers":null}}',
    )


def test_the_shipped_controller_role_may_create_subject_access_reviews(
    workspace_crd: Cluster, namespace: str
) -> None:
    # The shipped ClusterRole's rules under a name of this test's own, bound to a user of its own:
    # the API server, not a YAML reading, says whether the webhook's check can run.
    docs = yaml.safe_load_all((REPO / "manifests" / "base" / "rbac-controller.yaml").read_text())
    role = next(d for d in docs if d and d["kind"] == "ClusterRole")
    name, user = f"kaitopy-test-{namespace}", f"controller-{namespace}"
    role["metadata"] = {"name": name}
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }
    try:
        for doc in (role, binding):
            assert kubectl_apply(workspace_crd, namespace, doc).returncode == 0
        deadline = time.monotonic() + 30
        while True:
            out = subprocess.run(
                [
                    *_kubectl(workspace_crd),
                    "auth",
                    "can-i",
                    "create",
                    "subjectaccessreviews.authorization.k8s.io",
                    f"--as={user}",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
            if out == "yes":
                break
            assert time.monotonic() < deadline, out
            time.sleep(0.5)
    finally:
        workspace_crd.kubectl("delete", "clusterrolebinding,clusterrole", name, "--ignore-not-found")


def _kubectl(cluster: Cluster) -> list[str]:
    exe = str(cluster.bin_dir / "kubectl") if cluster.bin_dir else "kubectl"
    return [exe, f"--kubeconfig={cluster.kubeconfig}"]


async def test_a_config_map_the_author_may_not_read_is_neither_used_nor_described(
    webhook: WebhookServer, workspace_crd: Cluster, namespace: str
) -> None:
    client = webhook.client
    await _author(client, namespace)
    await client.create(
        kinds.CONFIG_MAP, {"metadata": {"name": "cfg", "namespace": namespace}, "data": {"private-key": "x"}}
    )
    doc = phi3("configured")
    doc["inference"]["config"] = "cfg"
    await _admitted_eventually(workspace_crd, namespace, phi3("preset"))
    rc, err = await _create_as_user(workspace_crd, namespace, doc)
    assert rc != 0
    assert f"inference.config: user {USER} may not get configmaps 'cfg' in namespace {namespace}; " in err
    assert "private-key" not in err  # the webhook's own read of the ConfigMap is not shown to them
