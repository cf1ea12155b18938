"""The inference workload as manifests: a Deployment (one node) or a StatefulSet with a headless
Service (several nodes), and the Service users call. Pure: plan in, dicts out."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from kaitopy.controllers.workspace.plan import (
    ADAPTER_MOUNT,
    CONFIG_MOUNT,
    GPU_RESOURCE,
    GPU_TAINT_KEY,
    GPU_TAINT_VALUE,
    REVISION_ANNOTATION,
    SERVER_PORT,
    WEIGHTS_MOUNT,
    WORKSPACE_LABEL,
    AdapterPlan,
    InferencePlan,
)
from kaitopy.controllers.workspace.podsecurity import (
    ADAPTERS_SIZE_LIMIT,
    SHM_SIZE_LIMIT,
    TOOLS_SIZE_LIMIT,
    harden,
    weights_size_limit,
)
from kaitopy.controllers.workspace.weightspull import (
    WEIGHTS_PULL_RESOURCES,
    weights_auth_volumes,
    weights_init_containers,
)

TOOLS_MOUNT = "/kaitopy-tools"
PROBE_PERIOD_S = 10
ADAPTER_LIST_ANNOTATION = "kaitopy.io/adapters"
"""On each model pod: the adapters its server must serve (JSON), written by the controller."""
TEMPLATE_ADAPTERS_ANNOTATION = "kaitopy.io/template-adapters"
"""On the Deployment: the adapters its pod template copies at start (JSON), so a later pass can
render the same template while the adapter list changes."""
ADAPTER_LIST_MOUNT = "/etc/kaitopy/adapter-list"
PULL_SECRETS_MOUNT = "/etc/kaitopy/pull-secrets"


def selector_labels(plan: InferencePlan) -> dict[str, str]:
    return {WORKSPACE_LABEL: plan.name}


def headless_name(plan: InferencePlan) -> str:
    return f"{plan.name}-headless"


def pod_address(plan: InferencePlan, rank: int) -> str:
    """A multi-node pod's DNS name (the headless Service publishes it before the pod is ready)."""
    return f"{plan.name}-{rank}.{headless_name(plan)}.{plan.namespace}.svc.cluster.local"


def leader_address(plan: InferencePlan) -> str:
    return pod_address(plan, 0)


def server_args(plan: InferencePlan) -> list[str]:
    args = [
        "serve",
        f"--engine={plan.runtime}",
        f"--model-dir={WEIGHTS_MOUNT}",
        *(
            [f"--hf-model-id={plan.hf_model_id}"]
            if plan.hf_model_id or not (plan.weights_image or plan.private_weights_image)
            else []
        ),
        f"--served-model-name={plan.preset}",
        f"--dtype={plan.dtype}",
        f"--tensor-parallel-size={plan.tensor_parallel_size}",
        f"--pipeline-parallel-size={plan.pipeline_parallel_size}",
        f"--adapter-dir={ADAPTER_MOUNT}",
        f"--port={SERVER_PORT}",
        "--host=0.0.0.0",
    ]
    if plan.hf_model_id:
        # The weights volume starts empty: the server fetches the preset's weights from the hub
        # (with HF_TOKEN for gated models) before it loads them.
        args.append("--allow-download")
    if plan.max_model_len:
        args.append(f"--max-model-len={plan.max_model_len}")
    if plan.tool_call_parser:
        args.append(f"--tool-call-parser={plan.tool_call_parser}")
    if plan.reasoning_parser:
        args.append(f"--reasoning-parser={plan.reasoning_parser}")
    if plan.config_map:
        args.append(f"--config={CONFIG_MOUNT}/inference_config.yaml")
    args += [f"--adapter-strength={a.name}={a.strength}" for a in plan.adapters]
    if plan.hot_load:
        args += [
            f"--adapter-desired-file={ADAPTER_LIST_MOUNT}/adapters",
            f"--adapter-pull-secrets-dir={PULL_SECRETS_MOUNT}",
            *(f"--adapter-image={a.name}={a.image}" for a in plan.adapters),
            *(f"--plain-http-registry={r}" for r in plan.plain_http_registries),
        ]
    if plan.multi_node:
        # Pod 0 leads (it serves and hosts the group's torch.distributed rendezvous); the others run
        # their pipeline stage for it. The node rank is the pod's StatefulSet ordinal.
        args += ["--role-from-pod-name", f"--leader-address={leader_address(plan)}"]
        # Every rank's server, so each watches the others and the group restarts as one.
        args += [f"--group-peer=http://{pod_address(plan, k)}:{SERVER_PORT}" for k in range(plan.node_count)]
    return args


def _probe(path: str, failure_threshold: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": SERVER_PORT},
        "periodSeconds": PROBE_PERIOD_S,
        "timeoutSeconds": 5,
        "failureThreshold": failure_threshold,
    }


COPY_RESOURCES = {
    # cp of a static busybox or of an adapter's files: a few MiB of page cache, no heap to speak of.
    "requests": {"cpu": "50m", "memory": "32Mi"},
    "limits": {"memory": "128Mi"},
}
MODEL_GPU_REQUESTS = {
    # A GPU server's host side: the API front, tokenizer, and weights staged through host memory
    # while they load. A request (for scheduling), no limit: the load peak must not be OOM-killed.
    "cpu": "1",
    "memory": "4Gi",
}


PRIVATE_WEIGHTS_DIR = "/workspace/weights"
"""Where Kaito's model images keep the weights (/workspace/vllm/weights and /workspace/tfs/weights
link to it)."""


def _private_weights_init(plan: InferencePlan) -> list[dict[str, Any]]:
    if not plan.private_weights_image:
        return []
    # Copied with our static busybox (the tools init container puts it there), so the user's image
    # needs no shell; -L follows the image's links to the files themselves.
    return [
        {
            "name": "weights",
            "image": plan.private_weights_image,
            "command": [
                f"{TOOLS_MOUNT}/busybox",
                "cp",
                "-rL",
                f"{PRIVATE_WEIGHTS_DIR}/.",
                f"{WEIGHTS_MOUNT}/",
            ],
            "resources": WEIGHTS_PULL_RESOURCES,
            "volumeMounts": [
                {"name": "tools", "mountPath": TOOLS_MOUNT},
                {"name": "weights", "mountPath": WEIGHTS_MOUNT},
            ],
        }
    ]


def _tools_init(plan: InferencePlan) -> list[dict[str, Any]]:
    if not (plan.adapters or plan.private_weights_image):
        return []
    return [
        {
            "name": "tools",
            "image": plan.tools_image,
            "command": ["/bin/cp", "/bin/busybox", f"{TOOLS_MOUNT}/busybox"],
            "resources": COPY_RESOURCES,
            "volumeMounts": [{"name": "tools", "mountPath": TOOLS_MOUNT}],
        }
    ]


def _resources(plan: InferencePlan) -> dict[str, Any]:
    if plan.cpu is not None:
        # The server runs on the node's CPU: the node's GPU stays free, and the measured CPU and
        # memory are what the scheduler must find.
        return {
            "requests": {"cpu": plan.cpu.cpu_request, "memory": plan.cpu.memory_request},
            "limits": {"cpu": plan.cpu.cpu_limit, "memory": plan.cpu.memory_limit},
        }
    gpus = str(plan.gpus_per_node)
    return {"requests": {**MODEL_GPU_REQUESTS, GPU_RESOURCE: gpus}, "limits": {GPU_RESOURCE: gpus}}


def _adapter_init_containers(plan: InferencePlan) -> list[dict[str, Any]]:
    return [_adapter_init(a) for a in plan.adapters]


def _adapter_init(adapter: AdapterPlan) -> dict[str, Any]:
    # Adapter images keep their files under /data; the copy runs with our static busybox, so the
    # image needs no shell of its own.
    return {
        "name": f"adapter-{adapter.name}",
        "image": adapter.image,
        "command": [
            f"{TOOLS_MOUNT}/busybox",
            "sh",
            "-c",
            f'mkdir -p "{ADAPTER_MOUNT}/{adapter.name}" && '
            f'{TOOLS_MOUNT}/busybox cp -r /data/. "{ADAPTER_MOUNT}/{adapter.name}/"',
        ],
        "resources": COPY_RESOURCES,
        "volumeMounts": [
            {"name": "tools", "mountPath": TOOLS_MOUNT},
            {"name": "adapters", "mountPath": ADAPTER_MOUNT},
        ],
    }


def adapter_list(adapters: tuple[AdapterPlan, ...]) -> str:
    """The adapters as the pod annotation (and the Deployment's record) carries them: compact JSON,
    in the Workspace's order."""
    items = [
        {"name": a.name, "image": a.image, "strength": a.strength, "pullSecrets": list(a.image_pull_secrets)}
        for a in adapters
    ]
    return json.dumps({"adapters": items}, separators=(",", ":"))


def parse_adapter_list(text: str) -> tuple[AdapterPlan, ...] | None:
    """adapter_list's text back as plans; None when it cannot be read."""
    try:
        items = json.loads(text)["adapters"]
        return tuple(
            AdapterPlan(
                name=str(a["name"]),
                image=str(a["image"]),
                strength=str(a["strength"]),
                image_pull_secrets=tuple(str(s) for s in a["pullSecrets"]),
            )
            for a in items
        )
    except (ValueError, KeyError, TypeError):
        return None


def pull_secret_names(adapters: tuple[AdapterPlan, ...]) -> list[str]:
    return sorted({s for a in adapters for s in a.image_pull_secrets})


def _hot_load_volumes(plan: InferencePlan) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts) the server's hot-load reads: the adapter annotation as a file (the kubelet
    rewrites it when the annotation changes) and the adapters' pull secrets, read-only."""
    if not plan.hot_load:
        return [], []
    volumes: list[dict[str, Any]] = [
        {
            "name": "adapter-list",
            "downwardAPI": {
                "items": [
                    {
                        "path": "adapters",
                        "fieldRef": {"fieldPath": f"metadata.annotations['{ADAPTER_LIST_ANNOTATION}']"},
                    }
                ]
            },
        }
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "adapter-list", "mountPath": ADAPTER_LIST_MOUNT, "readOnly": True}
    ]
    for i, secret in enumerate(pull_secret_names(plan.adapters)):
        volumes.append({"name": f"pull-secret-{i}", "secret": {"secretName": secret, "optional": True}})
        mounts.append(
            {"name": f"pull-secret-{i}", "mountPath": f"{PULL_SECRETS_MOUNT}/{secret}", "readOnly": True}
        )
    return volumes, mounts


def _node_affinity(plan: InferencePlan) -> dict[str, Any]:
    expressions: list[dict[str, Any]] = [
        {"key": k, "operator": "In", "values": [v]} for k, v in sorted(plan.match_labels.items())
    ]
    expressions += [dict(e) for e in plan.match_expressions]
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": expressions}]
            }
        }
    }


def _user_template(plan: InferencePlan) -> dict[str, Any]:
    """The user's pod template with the workspace's placement added: its own affinity and
    tolerations are kept, the node affinity and the GPU toleration are ours."""
    template: dict[str, Any] = copy.deepcopy(dict(plan.template or {}))
    # A template may spell an empty section as null (`spec: null`): treat it as empty.
    meta = template["metadata"] = template.get("metadata") or {}
    meta["labels"] = {**(meta.get("labels") or {}), **selector_labels(plan), **plan.extra_labels}
    spec = template["spec"] = template.get("spec") or {}
    spec["affinity"] = {**(spec.get("affinity") or {}), **_node_affinity(plan)}
    spec["tolerations"] = [*(spec.get("tolerations") or []), *_gpu_tolerations()]
    return template


def _gpu_tolerations() -> list[dict[str, Any]]:
    return [
        {"key": GPU_TAINT_KEY, "operator": "Equal", "value": GPU_TAINT_VALUE, "effect": "NoSchedule"},
        {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
    ]


def revision(plan: InferencePlan) -> str:
    """A hash of the pod template the plan renders (before it is stamped with this hash): what
    the pods are made of, and nothing else. A Service-only field (`kaito.sh/enablelb`) or a plan
    field that renders no differently changes no pod, so rolls none out."""
    data = json.dumps(_unstamped_pod_template(plan), sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def pod_template(plan: InferencePlan) -> dict[str, Any]:
    template = _unstamped_pod_template(plan)
    meta = template["metadata"]
    meta["annotations"] = {**(meta.get("annotations") or {}), REVISION_ANNOTATION: revision(plan)}
    return template


def _unstamped_pod_template(plan: InferencePlan) -> dict[str, Any]:
    if plan.template is not None:
        return _user_template(plan)
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    if plan.multi_node:
        # Each rank tells the others this address (vLLM's VLLM_HOST_IP); only multi-node pods get
        # it, so single-node pod templates, and their revision, stay as they were.
        env.append({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    if plan.model_access_secret:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": plan.model_access_secret, "key": "HF_TOKEN"}},
            }
        )
    if plan.cpu is not None:
        # torch sizes its thread pool to the node's cores, not the container's CPU limit; more
        # threads than the limit allows only get throttled.
        env.append({"name": "OMP_NUM_THREADS", "value": _whole_cores(plan.cpu.cpu_limit)})
        # The server sizes vLLM's KV cache from the RAM it may use; on a cgroup v1 node the
        # container cannot read its own limit, so it is handed over (bytes, `--memory-limit`).
        env.append(
            {
                "name": "KAITOPY_MEMORY_LIMIT",
                "valueFrom": {"resourceFieldRef": {"containerName": "model", "resource": "limits.memory"}},
            }
        )
    mounts: list[dict[str, Any]] = [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "weights", "mountPath": WEIGHTS_MOUNT},
        {"name": "adapters", "mountPath": ADAPTER_MOUNT},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE_LIMIT}},
        {"name": "weights", "emptyDir": {"sizeLimit": weights_size_limit(plan.weights_gib)}},
        {"name": "adapters", "emptyDir": {"sizeLimit": ADAPTERS_SIZE_LIMIT}},
    ]
    if plan.adapters or plan.private_weights_image:
        volumes.append({"name": "tools", "emptyDir": {"sizeLimit": TOOLS_SIZE_LIMIT}})
    volumes += weights_auth_volumes(plan)
    hot_volumes, hot_mounts = _hot_load_volumes(plan)
    volumes += hot_volumes
    mounts += hot_mounts
    if plan.config_map:
        mounts.append({"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True})
        volumes.append({"name": "config", "configMap": {"name": plan.config_map}})
    startup_failures = max(1, plan.startup_budget_s // PROBE_PERIOD_S)
    container = {
        "name": "model",
        "image": plan.image,
        "command": ["kaitopy"],
        "args": server_args(plan),
        "ports": [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}],
        "env": env,
        "resources": _resources(plan),
        "startupProbe": _probe("/health", startup_failures),
        "readinessProbe": _probe("/health", 3),
        "livenessProbe": _probe("/health", 6),
        # A server that dies at start-up leaves its last lines as the termination message, which
        # the workspace's CrashLoop condition quotes: the cause without `kubectl logs`.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    spec: dict[str, Any] = {
        "affinity": _node_affinity(plan),
        "tolerations": _gpu_tolerations(),
        "containers": [container],
        "volumes": volumes,
    }
    init = (
        _tools_init(plan)
        + weights_init_containers(plan)
        + _private_weights_init(plan)
        + _adapter_init_containers(plan)
    )
    if init:
        spec["initContainers"] = init
    harden(spec)
    secrets = sorted({*plan.image_pull_secrets, *(s for a in plan.adapters for s in a.image_pull_secrets)})
    if secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in secrets]
    return {
        "metadata": {
            "labels": {**selector_labels(plan), **plan.extra_labels},
        },
        "spec": spec,
    }


def _whole_cores(quantity: str) -> str:
    """A CPU quantity ("2", "1500m") as a thread count, at least 1."""
    cores = int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
    return str(max(1, int(cores)))


def _meta(plan: InferencePlan, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": plan.namespace,
        "labels": {**selector_labels(plan), **plan.extra_labels},
        "annotations": {REVISION_ANNOTATION: revision(plan)},
    }


def deployment(plan: InferencePlan) -> dict[str, Any]:
    meta = _meta(plan, plan.name)
    if plan.hot_load:
        meta["annotations"][TEMPLATE_ADAPTERS_ANNOTATION] = adapter_list(plan.adapters)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": plan.node_count if plan.template is not None else 1,
            # The old pod must free its GPU before the new one can have it.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector_labels(plan)},
            "template": pod_template(plan),
        },
    }


def statefulset(plan: InferencePlan) -> dict[str, Any]:
    template = pod_template(plan)
    # One model-server pod per node: spread by hostname.
    template["spec"]["affinity"]["podAntiAffinity"] = {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {
                "labelSelector": {"matchLabels": selector_labels(plan)},
                "topologyKey": "kubernetes.io/hostname",
            }
        ]
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(plan, plan.name),
        "spec": {
            "replicas": plan.node_count,
            "serviceName": headless_name(plan),
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector_labels(plan)},
            "template": template,
        },
    }


def headless_service(plan: InferencePlan) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(plan, headless_name(plan)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # workers must reach the leader before it is Ready
            "selector": selector_labels(plan),
            "ports": [{"name": "http", "port": SERVER_PORT, "targetPort": SERVER_PORT, "protocol": "TCP"}],
        },
    }


def service(plan: InferencePlan) -> dict[str, Any]:
    selector = selector_labels(plan)
    if plan.multi_node:
        selector = {**selector, "statefulset.kubernetes.io/pod-name": f"{plan.name}-0"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(plan, plan.name),
        "spec": {
            "type": "LoadBalancer" if plan.load_balancer else "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": 80, "targetPort": _target_port(plan), "protocol": "TCP"}],
        },
    }


def server_port(plan: InferencePlan) -> int:
    """The port the model server listens on in the pod (the user template's, when it names one)."""
    return _target_port(plan)


def _target_port(plan: InferencePlan) -> int:
    if plan.template is None:
        return SERVER_PORT
    # The template is schemaless: the API server admits any shape, so read it without trusting it
    # (a port without containerPort must not fail every reconcile of the workspace).
    spec = plan.template.get("spec")
    containers = spec.get("containers") if isinstance(spec, Mapping) else None
    for c in containers if isinstance(containers, list | tuple) else ():
        ports = c.get("ports") if isinstance(c, Mapping) else None
        for p in ports if isinstance(ports, list | tuple) else ():
            port = p.get("containerPort") if isinstance(p, Mapping) else None
            if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
                return port
    return 80
