"""The tuning Job as a manifest. Steps run as init containers, in order — fetch the data, train —
and the main container pushes the adapter image, so a push only ever follows a finished training."""

from __future__ import annotations

from typing import Any

from kaitopy.controllers.workspace.plan import (
    CONFIG_MOUNT,
    GPU_RESOURCE,
    GPU_TAINT_KEY,
    GPU_TAINT_VALUE,
    REVISION_ANNOTATION,
    WEIGHTS_MOUNT,
    WORKSPACE_LABEL,
    TuningPlan,
)
from kaitopy.controllers.workspace.podsecurity import (
    SHM_SIZE_LIMIT,
    TOOLS_SIZE_LIMIT,
    harden,
    size_limit_gib,
    weights_size_limit,
)
from kaitopy.controllers.workspace.weightspull import weights_auth_volumes, weights_init_containers

DATA_MOUNT = "/mnt/data"
RESULTS_MOUNT = "/mnt/results"
PUSH_SECRET_MOUNT = "/mnt/push-secret"
TOOLS_MOUNT = "/kaitopy-tools"
RESULTS_SIZE_LIMIT = "50Gi"
"""The results volume: the adapter, its checkpoints and their optimizer states."""

COPY_RESOURCES = {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}}
FETCH_RESOURCES = {
    # `tune fetch` streams 1 MiB chunks to disk, at most 4 URLs at a time.
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}
TRAIN_HOST_REQUESTS = {
    # The trainer's host side: the base model passes through host memory on its way to the GPU
    # (QLoRA quantizes it there). A request for scheduling, no memory limit: the load peak must
    # not be OOM-killed.
    "cpu": "2",
    "memory": "8Gi",
}
PUSH_RESOURCES = {
    # `tune push` writes the layer tar and gzip to disk in chunks; the registry upload streams.
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "1Gi"},
}


def data_size_limit(plan: TuningPlan) -> str:
    """The fetched data's volume: the download budget plus 10% (partial files, file system)."""
    return size_limit_gib(-(-plan.max_input_bytes * 11 // (10 * 1024**3)))


def _tools(plan: TuningPlan) -> dict[str, Any]:
    return {
        "name": "tools",
        "image": plan.tools_image,
        "command": ["/bin/cp", "/bin/busybox", f"{TOOLS_MOUNT}/busybox"],
        "resources": COPY_RESOURCES,
        "volumeMounts": [{"name": "tools", "mountPath": TOOLS_MOUNT}],
    }


def _data_step(plan: TuningPlan) -> list[dict[str, Any]]:
    if plan.input_urls:
        return [
            {
                "name": "fetch-data",
                "image": plan.image,
                "command": ["kaitopy"],
                "args": [
                    "tune",
                    "fetch",
                    f"--dest={DATA_MOUNT}",
                    f"--max-urls={plan.max_input_urls}",
                    f"--max-total-bytes={plan.max_input_bytes}",
                    *(f"--allow-network={n}" for n in plan.allowed_networks),
                    *(f"--url={u}" for u in plan.input_urls),
                ],
                "resources": FETCH_RESOURCES,
                "volumeMounts": [{"name": "data", "mountPath": DATA_MOUNT}],
            }
        ]
    if plan.input_image:
        return [
            _tools(plan),
            {
                "name": "fetch-data",
                "image": plan.input_image,
                "command": [f"{TOOLS_MOUNT}/busybox", "cp", "-r", "/data/.", f"{DATA_MOUNT}/"],
                "resources": COPY_RESOURCES,
                "volumeMounts": [
                    {"name": "tools", "mountPath": TOOLS_MOUNT},
                    {"name": "data", "mountPath": DATA_MOUNT},
                ],
            },
        ]
    return []  # a volume: mounted as is


def _trainer(plan: TuningPlan) -> dict[str, Any]:
    args = [
        "tune",
        "train",
        f"--method={plan.method}",
        f"--model-dir={WEIGHTS_MOUNT}",
        f"--hf-model-id={plan.hf_model_id}",
        f"--data-dir={DATA_MOUNT}",
        f"--output-dir={RESULTS_MOUNT}",
    ]
    if plan.config_map:
        args.append(f"--config={CONFIG_MOUNT}/training_config.yaml")
    mounts: list[dict[str, Any]] = [
        {"name": "data", "mountPath": DATA_MOUNT},
        {"name": "results", "mountPath": RESULTS_MOUNT},
        {"name": "weights", "mountPath": WEIGHTS_MOUNT},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    if plan.config_map:
        mounts.append({"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True})
    env: list[dict[str, Any]] = []
    if plan.model_access_secret:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": plan.model_access_secret, "key": "HF_TOKEN"}},
            }
        )
    return {
        "name": "train",
        "image": plan.image,
        "command": ["kaitopy"],
        "args": args,
        "env": env,
        "resources": _trainer_resources(plan),
        "volumeMounts": mounts,
    }


def _trainer_resources(plan: TuningPlan) -> dict[str, Any]:
    if plan.cpu is not None:
        # A model that trains on CPU: the node's GPU stays free. The preset's CPU figures are the
        # server's; training holds the weights, activations and optimizer state in the same
        # memory, so it asks for the server's limit and, as on GPU, sets no memory limit of its
        # own (a load peak must not be OOM-killed).
        return {
            "requests": {"cpu": plan.cpu.cpu_request, "memory": plan.cpu.memory_limit},
            "limits": {"cpu": plan.cpu.cpu_limit},
        }
    gpus = str(plan.gpus_per_node)
    return {"requests": {**TRAIN_HOST_REQUESTS, GPU_RESOURCE: gpus}, "limits": {GPU_RESOURCE: gpus}}


def _pusher(plan: TuningPlan) -> dict[str, Any]:
    return {
        "name": "push",
        "image": plan.image,
        "command": ["kaitopy"],
        "args": [
            "tune",
            "push",
            f"--dir={RESULTS_MOUNT}",
            f"--image={plan.output_image}",
            f"--docker-config={PUSH_SECRET_MOUNT}/.dockerconfigjson",
            *(["--plain-http"] if plan.push_plain_http else []),
        ],
        "resources": PUSH_RESOURCES,
        "volumeMounts": [
            {"name": "results", "mountPath": RESULTS_MOUNT},
            {"name": "push-secret", "mountPath": PUSH_SECRET_MOUNT, "readOnly": True},
        ],
    }


def tuning_job(plan: TuningPlan) -> dict[str, Any]:
    data = dict(plan.input_volume or {"emptyDir": {"sizeLimit": data_size_limit(plan)}})
    results = dict(plan.output_volume or {"emptyDir": {"sizeLimit": RESULTS_SIZE_LIMIT}})
    volumes: list[dict[str, Any]] = [
        {"name": "data", **data},
        {"name": "results", **results},
        {"name": "weights", "emptyDir": {"sizeLimit": weights_size_limit(plan.weights_gib)}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE_LIMIT}},
    ]
    volumes += weights_auth_volumes(plan)
    if plan.input_image:
        volumes.append({"name": "tools", "emptyDir": {"sizeLimit": TOOLS_SIZE_LIMIT}})
    if plan.config_map:
        volumes.append({"name": "config", "configMap": {"name": plan.config_map}})
    init = _data_step(plan) + weights_init_containers(plan)
    trainer = _trainer(plan)
    if plan.output_image:
        volumes.append({"name": "push-secret", "secret": {"secretName": plan.output_push_secret or ""}})
        init.append(trainer)
        containers = [_pusher(plan)]
    else:
        containers = [trainer]
    labels = {WORKSPACE_LABEL: plan.name}
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": k, "operator": "In", "values": [v]}
                                for k, v in sorted(plan.match_labels.items())
                            ]
                        }
                    ]
                }
            }
        },
        "tolerations": [
            {"key": GPU_TAINT_KEY, "operator": "Equal", "value": GPU_TAINT_VALUE, "effect": "NoSchedule"},
            {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
        ],
        "containers": containers,
        "volumes": volumes,
    }
    if init:
        spec["initContainers"] = init
    for c in [*init, *containers]:
        # A step that fails leaves its last lines as the termination message: the workspace's
        # TuningJobFailed condition quotes them.
        c["terminationMessagePolicy"] = "FallbackToLogsOnError"
    harden(spec)
    if plan.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in plan.image_pull_secrets]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": plan.name,
            "namespace": plan.namespace,
            "labels": labels,
            "annotations": {REVISION_ANNOTATION: plan.revision()},
        },
        "spec": {
            "backoffLimit": 3,
            "activeDeadlineSeconds": plan.deadline_s,
            "template": {
                "metadata": {"labels": labels, "annotations": {REVISION_ANNOTATION: plan.revision()}},
                "spec": spec,
            },
        },
    }
