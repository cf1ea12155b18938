"""The real reason, on the Workspace: workloads that cannot run, on a real node (kubelet +
containerd), each named on the Workspace with a specific reason and a message a user can act on,
and `kaitopy status --wait` giving up on them with the fix.

One node serves every case: the test brings it, as a user would (a NodeClaim that no workspace owns,
so its node is shared by every workspace whose selector and instance type match it)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kaitopy.controllers.workspace import nodes as nodesel
from kaitopy.controllers.workspace.plan import WORKSPACE_LABEL, WORKSPACE_NAMESPACE_LABEL
from tests.e2e.operator import Operator
from tests.support import localnodes
from tests.support.cluster import Cluster
from tests.support.localnodes import wait

KAITOPY = str(Path(sys.executable).parent / "kaitopy")
INSTANCE_TYPE = "Standard_NC6s_v3"
LABELS = {"apps": "failures"}
PRESET = "smollm2-135m-instruct"


def workspace(name: str, namespace: str, inference: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": namespace},
        "resource": {"instanceType": INSTANCE_TYPE, "labelSelector": {"matchLabels": LABELS}},
        "inference": inference,
    }


def template(container: dict[str, Any], volumes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"terminationGracePeriodSeconds": 1, "containers": [{"name": "main", **container}]}
    if volumes:
        spec["volumes"] = volumes
    return {"template": {"metadata": {"labels": {"case": "failure"}}, "spec": spec}}


def cases(tools: str, registry: str) -> dict[str, tuple[dict[str, Any], str, str]]:
    """name -> (inference spec, reason, words the message must hold)."""

    def busybox(script: str) -> dict[str, Any]:
        return {"image": tools, "command": ["/bin/busybox", "sh", "-c", script]}

    return {
        "missing-image": (
            template({"image": f"{registry}/kaitopy/no-such-image:1"}),
            "ImagePullError",
            "no-such-image",
        ),
        "oom": (
            # The shell holds 256 MiB in a variable under a 32 MiB limit.
            template(
                {
                    **busybox('x="$(head -c 268435456 /dev/zero | tr "\\\\0" x)"; echo "${#x}"'),
                    "resources": {"limits": {"memory": "32Mi"}},
                }
            ),
            "OOMKilled",
            "ran out of memory",
        ),
        "never-ready": (
            template(
                {
                    **busybox("exec /bin/busybox sleep 3600"),
                    "readinessProbe": {
                        "exec": {"command": ["/bin/busybox", "test", "-e", "/ready"]},
                        "periodSeconds": 1,
                    },
                }
            ),
            "ReadinessProbeFailing",
            "Readiness probe failed",
        ),
        "missing-secret-volume": (
            template(
                {
                    **busybox("exec /bin/busybox sleep 3600"),
                    "volumeMounts": [{"name": "push", "mountPath": "/p"}],
                },
                [{"name": "push", "secret": {"secretName": "push-credentials"}}],
            ),
            "VolumeMountFailed",
            'secret "push-credentials" not found',
        ),
        "missing-secret-env": (
            template(
                {
                    **busybox("exec /bin/busybox sleep 3600"),
                    "env": [
                        {
                            "name": "HF_TOKEN",
                            "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
                        }
                    ],
                }
            ),
            "ContainerConfigError",
            'secret "hf-token" not found',
        ),
        "too-big": (
            template(
                {**busybox("exec /bin/busybox sleep 3600"), "resources": {"requests": {"memory": "100Ti"}}}
            ),
            "Unschedulable",
            "Insufficient memory",
        ),
    }


def conditions(k: Callable[..., str], name: str, namespace: str) -> dict[str, dict[str, Any]]:
    got = json.loads(k("get", "workspace", name, "-n", namespace, "-o", "json"))
    return {c["type"]: c for c in (got.get("status") or {}).get("conditions") or ()}


def reason_is(k: Callable[..., str], name: str, namespace: str, reason: str) -> dict[str, Any] | None:
    c = conditions(k, name, namespace).get("InferenceReady") or {}
    return c if c.get("reason") == reason else None


def test_each_failing_workload_names_its_cause_on_the_workspace(
    local_model_operator: tuple[Operator, Path],
    kube_cluster: Cluster,
    model_images: localnodes.LocalImages,
    namespace: str,
) -> None:
    _, local_dir = local_model_operator
    k = kube_cluster.kubectl
    quota_ns = f"{namespace}-quota"
    made: list[tuple[str, str]] = []

    def apply(ws: dict[str, Any]) -> None:
        k("apply", "-f", "-", input=json.dumps(ws))
        made.append((ws["metadata"]["namespace"], ws["metadata"]["name"]))

    claim = nodesel.nodeclaim(
        workspace="-", namespace="-", workspace_uid="failures", slot=0, instance_type=INSTANCE_TYPE,
        match_labels=LABELS, storage_gib=10, gpus=1,
    )  # fmt: skip
    for label in (WORKSPACE_LABEL, WORKSPACE_NAMESPACE_LABEL):
        claim["metadata"]["labels"].pop(label, None)
    claim_name = claim["metadata"]["name"]
    try:
        k("apply", "-f", "-", input=json.dumps(claim))
        node = wait(
            "the node", lambda: k("get", "nodes", "-l", "apps=failures", "-o", "name").strip(), timeout=300
        )
        ready_path = "jsonpath={.status.conditions[?(@.type=='Ready')].status}"
        wait("the node Ready", lambda: "True" in k("get", node, "-o", ready_path), timeout=300)
        # The server itself refuses its configuration: a crash loop that quotes the server's words.
        config = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "bad-config", "namespace": namespace},
            "data": {"inference_config.yaml": "transformers:\n  no_such_option: 1\n"},
        }
        k("apply", "-f", "-", input=json.dumps(config))
        apply(workspace("crash", namespace, {"preset": {"name": PRESET}, "config": "bad-config"}))

        expected = cases(model_images.refs["tools"], model_images.registry)
        for name, (inference, _, _) in expected.items():
            apply(workspace(name, namespace, inference))
        # Pods the API server refuses: a quota of no pods in another namespace.
        k("create", "namespace", quota_ns)
        k("create", "quota", "no-pods", "--hard=pods=0", "-n", quota_ns)
        refused = template(
            {"image": model_images.refs["tools"], "command": ["/bin/busybox", "sleep", "3600"]}
        )
        wait(
            "the quota's default service account",
            lambda: k("get", "sa", "default", "-n", quota_ns),
            timeout=60,
        )
        apply(workspace("refused", quota_ns, refused))

        expected["crash"] = ({}, "CrashLoop", "no_such_option")
        seen: dict[str, str] = {}
        for name, (_, reason, words) in expected.items():

            def shows(name: str = name, reason: str = reason) -> dict[str, Any] | None:
                return reason_is(k, name, namespace, reason)

            got = wait(f"{name}: {reason}", shows, timeout=300)
            assert got is not None and words in got["message"], (name, got)
            seen[name] = got["message"]
        got = wait(
            "refused: PodsRefused", lambda: reason_is(k, "refused", quota_ns, "PodsRefused"), timeout=120
        )
        assert got is not None and "exceeded quota" in got["message"], got
        print(json.dumps(seen, indent=1))

        # `kaitopy status --wait` gives up on a failing pod once it has settled, and says the fix.
        waited = subprocess.run(
            [
                KAITOPY,
                "status",
                "missing-image",
                "-n",
                namespace,
                "--wait",
                "--settle=2",
                "--interval=0.5",
                f"--kubeconfig={kube_cluster.kubeconfig}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert waited.returncode == 1, waited
        assert "fix: check that the image name and tag exist" in waited.stdout, waited.stdout

        # Lifting the quota lets the refused workspace through: nothing was lost meanwhile.
        k("delete", "quota", "no-pods", "-n", quota_ns)

        def ready() -> bool:
            return conditions(k, "refused", quota_ns).get("WorkspaceSucceeded", {}).get("status") == "True"

        wait("refused: Ready once the quota is gone", ready, timeout=180)
    except BaseException:
        print(k("get", "workspace,pods,nodes", "-A", "-o", "wide", check=False))
        raise
    finally:
        for ns, name in made:
            k("delete", "workspace", name, "-n", ns, "--ignore-not-found", "--wait=false", check=False)
        for ns, name in made:

            def gone(ns: str = ns, name: str = name) -> bool:
                return "NotFound" in k("get", "workspace", name, "-n", ns, check=False)

            wait(f"workspace {name} gone", gone, timeout=300)
        k("delete", "namespace", quota_ns, "--ignore-not-found", "--wait=false", check=False)
        k("delete", "nodeclaim", claim_name, "--ignore-not-found", "--wait=false", check=False)
    wait(
        "the node gone",
        lambda: not k("get", "nodes", "-l", "apps=failures", "-o", "name").strip(),
        timeout=180,
    )
    assert not list((local_dir / "nodes").glob("*/node.json"))
