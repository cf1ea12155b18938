"""The shipped ValidatingAdmissionPolicy on the real API server: each privileged or host field in a
Workspace is refused with the policy's message; a harmless template is admitted."""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from tests.integration.api.conftest import REPO, kubectl_apply, phi3, tuning
from tests.support.cluster import Cluster

POLICY = REPO / "manifests" / "base" / "workspace-template-policy.yaml"
CONTAINER = {"name": "m", "image": "registry.example.com/m:1"}


def _templated(spec: dict[str, Any], container: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = phi3(f"t-{uuid.uuid4().hex[:6]}")
    doc["inference"] = {"template": {"spec": {"containers": [{**CONTAINER, **(container or {})}], **spec}}}
    return doc


def _security(context: dict[str, Any]) -> dict[str, Any]:
    return _templated({}, {"securityContext": context})


def _tuning_volume(where: str) -> dict[str, Any]:
    doc = tuning(f"t-{uuid.uuid4().hex[:6]}")
    doc["tuning"][where] = {"volumeSource": {"hostPath": {"path": "/"}}}
    return doc


def _adapter_volume() -> dict[str, Any]:
    doc = phi3(f"t-{uuid.uuid4().hex[:6]}")
    doc["inference"]["adapters"] = [{"source": {"name": "a", "volumeSource": {"hostPath": {"path": "/"}}}}]
    return doc


@pytest.fixture
async def policy(workspace_crd: Cluster, namespace: str) -> AsyncIterator[Cluster]:
    """The shipped policy, with its binding limited to this test's namespace (other tests sharing
    the cluster never meet it)."""
    policy_doc, binding = list(yaml.safe_load_all(POLICY.read_text()))
    binding = copy.deepcopy(binding)
    binding["metadata"]["name"] = f"kaitopy-test-{namespace}"
    binding["spec"]["matchResources"] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    }
    for doc in (policy_doc, binding):
        proc = kubectl_apply(workspace_crd, namespace, doc)
        assert proc.returncode == 0, proc.stderr
    # The API server loads policies asynchronously: wait until a known-bad Workspace is refused.
    deadline = time.monotonic() + 60
    while (await _create(workspace_crd, namespace, _templated({"hostPID": True})))[0] == 0:
        assert time.monotonic() < deadline, "the policy never took effect"
        await asyncio.sleep(0.5)
    try:
        yield workspace_crd
    finally:
        workspace_crd.kubectl("delete", "validatingadmissionpolicybinding", binding["metadata"]["name"])


async def _create(cluster: Cluster, namespace: str, doc: dict[str, Any]) -> tuple[int, str]:
    proc = await asyncio.to_thread(kubectl_apply, cluster, namespace, doc, verb="create")
    return proc.returncode, proc.stderr


FORBIDDEN = [
    ("hostNetwork", _templated({"hostNetwork": True}), "inference.template.spec.hostNetwork:"),
    ("hostPID", _templated({"hostPID": True}), "inference.template.spec.hostPID:"),
    ("hostIPC", _templated({"hostIPC": True}), "inference.template.spec.hostIPC:"),
    (
        "hostPath",
        _templated({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}),
        "inference.template.spec.volumes: a Workspace template may not mount hostPath volumes",
    ),
    ("privileged", _security({"privileged": True}), "securityContext.privileged:"),
    (
        "initContainer-privileged",
        _templated({"initContainers": [{**CONTAINER, "securityContext": {"privileged": True}}]}),
        "securityContext.privileged:",
    ),
    (
        "allowPrivilegeEscalation",
        _security({"allowPrivilegeEscalation": True}),
        "securityContext.allowPrivilegeEscalation:",
    ),
    ("capabilities", _security({"capabilities": {"add": ["SYS_ADMIN"]}}), "capabilities.add:"),
    (
        "serviceAccountName",
        _templated({"serviceAccountName": "admin"}),
        "inference.template.spec.serviceAccountName:",
    ),
    (
        "serviceAccount",
        _templated({"serviceAccount": "admin"}),
        "inference.template.spec.serviceAccountName:",
    ),
    ("nodeName", _templated({"nodeName": "gpu-1"}), "inference.template.spec.nodeName:"),
    (
        "tuning-input-hostPath",
        _tuning_volume("input"),
        "volumeSource: a Workspace may not use a hostPath volume",
    ),
    (
        "tuning-output-hostPath",
        _tuning_volume("output"),
        "volumeSource: a Workspace may not use a hostPath volume",
    ),
]


async def test_each_forbidden_field_is_refused_with_the_policy_message(
    policy: Cluster, namespace: str
) -> None:
    failures = []
    for name, doc, message in FORBIDDEN:
        rc, err = await _create(policy, namespace, doc)
        if (
            rc == 0
            or "ValidatingAdmissionPolicy 'kaitopy-workspace-template'" not in err
            or message not in err
        ):
            failures.append(f"{name}: rc={rc} {err.strip()}")
    assert not failures, "\n".join(failures)


async def test_an_update_that_leaves_the_spec_alone_is_not_judged(policy: Cluster, namespace: str) -> None:
    # Created before the policy existed (simulated: the binding is off meanwhile), then labelled.
    doc = _templated({"hostNetwork": True})
    name = doc["metadata"]["name"]
    binding = f"kaitopy-test-{namespace}"
    bound = policy.kubectl("get", "validatingadmissionpolicybinding", binding, "-o", "json")
    policy.kubectl("delete", "validatingadmissionpolicybinding", binding)
    deadline = time.monotonic() + 60
    while (rc := (await _create(policy, namespace, doc))[0]) != 0:
        assert time.monotonic() < deadline, "the policy never went away"
        await asyncio.sleep(0.5)
    restored = json.loads(bound)
    for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
        restored["metadata"].pop(key, None)
    assert kubectl_apply(policy, namespace, restored, verb="create").returncode == 0
    while (await _create(policy, namespace, _templated({"hostPID": True})))[0] == 0:
        assert time.monotonic() < deadline, "the policy never came back"
        await asyncio.sleep(0.5)
    assert rc == 0
    policy.kubectl("-n", namespace, "label", "workspace", name, "touched=yes")
    policy.kubectl(
        "-n",
        namespace,
        "patch",
        "workspace",
        name,
        "--type=merge",
        "-p",
        '{"metadata":{"finalizers":["x/y"]}}',
    )
    policy.kubectl(
        "-n", namespace, "patch", "workspace", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}'
    )


@pytest.mark.parametrize(
    "doc",
    [
        _templated(
            {"serviceAccountName": "default", "volumes": [{"name": "cache", "emptyDir": {}}]},
            {"securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}},
        ),
        phi3("preset"),
        tuning("tune"),
    ],
    ids=["harmless-template", "preset", "tuning"],
)
async def test_harmless_workspaces_are_admitted(policy: Cluster, namespace: str, doc: dict[str, Any]) -> None:
    rc, err = await _create(policy, namespace, doc)
    assert rc == 0, err
