"""The admission webhook judges an InferenceSet as the member Workspace it would make, naming the
fields as the set's author wrote them; scaling through the scale subresource never goes through it."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from kaitopy.webhooks.server import WebhookServer
from tests.integration.api.conftest import kubectl_apply
from tests.support.cluster import Cluster

CRD = "manifests/crds/kaito.sh_inferencesets.yaml"

SET: dict[str, Any] = {
    "apiVersion": "kaito.sh/v1beta1",
    "kind": "InferenceSet",
    "metadata": {"name": "phi"},
    "spec": {
        "replicas": 1,
        "labelSelector": {"matchLabels": {"apps": "phi"}},
        "template": {
            "resource": {"instanceType": "Standard_NC6s_v3"},
            "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
        },
    },
}


def with_crd(cluster: Cluster) -> None:
    from tests.integration.api.conftest import REPO

    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/inferencesets.kaito.sh")


async def apply(cluster: Cluster, namespace: str, doc: dict[str, Any]) -> tuple[int, str]:
    proc = await asyncio.to_thread(kubectl_apply, cluster, namespace, doc)
    return proc.returncode, proc.stderr


async def test_inferenceset_admission(webhook: WebhookServer, workspace_crd: Cluster, namespace: str) -> None:
    cluster = workspace_crd
    with_crd(cluster)

    unknown = copy.deepcopy(SET)
    unknown["spec"]["template"]["inference"]["preset"]["name"] = "no-such-model"
    rc, err = await apply(cluster, namespace, unknown)
    assert rc != 0 and "spec.template.inference.preset.name" in err and "no-such-model" in err, err

    small_gpu = copy.deepcopy(SET)
    small_gpu["spec"]["template"]["inference"]["preset"]["name"] = "llama-3.3-70b-instruct"
    small_gpu["spec"]["template"]["inference"]["preset"]["presetOptions"] = {"modelAccessSecret": "hf"}
    rc, err = await apply(cluster, namespace, small_gpu)
    assert rc != 0 and "spec.template.resource.instanceType" in err, err

    pod = copy.deepcopy(SET)
    pod["spec"]["template"]["inference"] = {
        "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}
    }
    rc, err = await apply(cluster, namespace, pod)
    assert rc != 0 and "spec.template.inference.template: pod templates are not supported" in err, err

    bad_autoscaler = copy.deepcopy(SET)
    bad_autoscaler["metadata"]["annotations"] = {"autoscaling.kaitopy.io/enabled": "true"}
    rc, err = await apply(cluster, namespace, bad_autoscaler)
    assert rc != 0 and "metadata.annotations[autoscaling.kaitopy.io/max-replicas] is required" in err, err

    rc, err = await apply(cluster, namespace, SET)
    assert rc == 0, err
    # Scaling is a subresource write: not sent to the webhook, never blocked by it.
    await asyncio.to_thread(cluster.kubectl, "scale", "inferenceset", "phi", "-n", namespace, "--replicas=2")
    got = json.loads(cluster.kubectl("get", "inferenceset", "phi", "-n", namespace, "-o", "json"))
    assert got["spec"]["replicas"] == 2
    # An update that breaks the template is judged like a create (here: a ConfigMap that is not there).
    missing_config = copy.deepcopy(SET)
    missing_config["spec"]["template"]["inference"]["config"] = "no-such-config"
    rc, err = await apply(cluster, namespace, missing_config)
    assert rc != 0 and "spec.template.inference.config" in err and "no-such-config" in err, err
