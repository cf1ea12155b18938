"""Scale from zero on a real node (the `local` provider, the small CPU preset): a request to an
InferenceSet at zero, through the activator, makes a member Workspace, a NodeClaim, a kubelet +
containerd node, the model pod; it is answered (streamed) once the pod is ready; the time to its first
token is printed with the member's start-up phases (node, image pull, weights, engine). Idle, the set
returns to zero and the node is removed from the machine. Uses machine-wide resources (local nodes):
run it alone, as the other local-node tests."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes_asyncio.client.api_client import ApiClient

from kaitopy.activator.admission import HoldSettings
from kaitopy.controllers.inferenceset.autoscale import PREFIX
from kaitopy.runtime import Client
from tests.e2e.operator import OPERATOR_NAMESPACE, Operator
from tests.e2e.test_inferenceset import INFERENCESET, WORKSPACE
from tests.support import localnodes
from tests.support.activator import running_activator
from tests.support.cluster import Cluster
from tests.support.wait import eventually

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "inference" / "kaitopy_workspace_smollm2_local.yaml"
PRESET = "smollm2-135m-instruct"
IDLE_S = 30  # the controller's autoscaler looks every 15 s: back to zero within about 45 s


@pytest.fixture
def client(api_client: ApiClient) -> Client:
    return Client(api_client)


def smollm2_set(namespace: str) -> dict[str, Any]:
    ws = yaml.safe_load(EXAMPLE.read_text())
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "InferenceSet",
        "metadata": {
            "name": "smollm2",
            "namespace": namespace,
            "annotations": {
                PREFIX + "enabled": "true",
                PREFIX + "min-replicas": "0",
                PREFIX + "max-replicas": "1",
                PREFIX + "idle-seconds": str(IDLE_S),
            },
        },
        "spec": {
            "replicas": 0,
            "labelSelector": ws["resource"]["labelSelector"],
            "template": {
                "resource": {"instanceType": ws["resource"]["instanceType"]},
                "inference": ws["inference"],
            },
        },
    }


async def test_a_request_at_zero_is_answered_by_a_real_node_and_idle_removes_it(
    local_model_operator: tuple[Operator, Path],
    operator_identities: dict[str, Path],
    kube_cluster: Cluster,
    client: Client,
    namespace: str,
) -> None:
    _, local_dir = local_model_operator
    k = kube_cluster.kubectl

    def service_ip(ns: str, member: str) -> str:
        # The member's Service by its ClusterIP (this machine routes Service addresses to the local
        # nodes; the cluster's DNS names do not resolve here).
        return "http://" + k("get", "service", member, "-n", ns, "-o", "jsonpath={.spec.clusterIP}").strip()

    k("apply", "-f", "-", input=json.dumps(smollm2_set(namespace)))
    as_activator = await Client.from_kubeconfig(str(operator_identities["activator"]))
    try:
        async with (
            as_activator,
            running_activator(
                as_activator,
                OPERATOR_NAMESPACE,
                service_ip,
                HoldSettings(max_queue=4, max_wait_s=900, retry_after_s=10),
                activity_interval_s=5,
            ) as act,
        ):
            question = [{"role": "user", "content": "What is the capital of France?"}]
            body = {"model": PRESET, "messages": question, "max_tokens": 16, "temperature": 0, "stream": True}
            t0 = time.monotonic()
            first_token: float | None = None
            text = b""
            async with (
                aiohttp.ClientSession() as s,
                s.post(
                    f"{act.url}/inferencesets/{namespace}/smollm2/v1/chat/completions",
                    json=body,
                    timeout=aiohttp.ClientTimeout(total=1200),
                ) as resp,
            ):
                assert resp.status == 200, await resp.text()
                async for chunk in resp.content.iter_any():
                    if first_token is None and b'"content"' in chunk:
                        first_token = time.monotonic() - t0
                    text += chunk
            total = time.monotonic() - t0
            assert b"[DONE]" in text and b"Paris" in text, text[-2000:]
            (member,) = (await client.list(WORKSPACE, namespace)).items
            startup = member["status"]["startup"]
            (node_name,) = member["status"]["workerNodes"]
            print(
                f"first request at zero: first token after {first_token:.1f}s, done after {total:.1f}s; "
                "member start-up phases: "
                + ", ".join(f"{p['name']} {p['seconds']:.1f}s" for p in startup["phases"])
            )
            labels = {"namespace": namespace, "inferenceset": "smollm2"}
            assert act.sample("kaitopy_activator_wakes_total", **labels) == 1
            record = json.loads((local_dir / "nodes" / node_name / "node.json").read_text())

            # Idle: back to zero, and the node leaves the machine.
            started = time.monotonic()
            await eventually(
                lambda: client.get(INFERENCESET, "smollm2", namespace=namespace),
                until=lambda s: s["spec"]["replicas"] == 0,
                timeout=IDLE_S + 120,
                what="the idle set scaled to zero",
            )
            localnodes.wait(
                "the node to be gone",
                lambda: "NotFound" in k("get", "node", node_name, check=False),
                timeout=300,
            )
            print(
                f"idle set back to zero and its node gone {time.monotonic() - started:.0f}s after the answer"
            )
            bridge = f"kpbr{record['index']}"
            assert localnodes.leftovers(local_dir / "nodes" / node_name, node_name, bridge) == []
    finally:
        k(
            "delete",
            "inferenceset",
            "smollm2",
            "-n",
            namespace,
            "--ignore-not-found",
            "--wait=false",
            check=False,
        )
        localnodes.wait(
            "the members gone",
            lambda: (
                "No resources" in k("get", "workspace", "-n", namespace, check=False)
                or not k("get", "workspace", "-n", namespace, "-o", "name", check=False).strip()
            ),
            timeout=300,
        )
