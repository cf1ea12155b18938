"""The init container that pulls a preset's OCI weights artifact into the weights volume, and its
credentials volume. Shared by the inference pods and the tuning Job: both read the same weights
the same way."""

from __future__ import annotations

from typing import Any, Protocol

from kaitopy.controllers.workspace.plan import WEIGHTS_MOUNT

WEIGHTS_PULL_RESOURCES = {
    # `kaitopy weights pull` streams each blob to disk in 1 MiB chunks: measured ~36 MiB RSS.
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "256Mi"},
}
WEIGHTS_AUTH_MOUNT = "/var/run/kaitopy/weights-auth"


class WeightsSource(Protocol):
    """What a plan says about its weights artifact (InferencePlan and TuningPlan both do)."""

    @property
    def image(self) -> str: ...  # the pod's own image, which has `kaitopy weights pull`
    @property
    def weights_image(self) -> str | None: ...
    @property
    def weights_digest(self) -> str | None: ...
    @property
    def weights_plain_http(self) -> bool: ...
    @property
    def weights_pull_secret(self) -> str | None: ...


def weights_pull_args(plan: WeightsSource) -> list[str]:
    args = ["weights", "pull", f"--image={plan.weights_image}", f"--dest={WEIGHTS_MOUNT}"]
    if plan.weights_digest:
        args.append(f"--digest={plan.weights_digest}")
    if plan.weights_plain_http:
        args.append("--plain-http")
    if plan.weights_pull_secret:
        args.append(f"--docker-config={WEIGHTS_AUTH_MOUNT}/config.json")
    return args


def weights_init_containers(plan: WeightsSource) -> list[dict[str, Any]]:
    if not plan.weights_image:
        return []
    mounts: list[dict[str, Any]] = [{"name": "weights", "mountPath": WEIGHTS_MOUNT}]
    if plan.weights_pull_secret:
        # Only the init container sees the registry credentials, not the server or the trainer.
        mounts.append({"name": "weights-auth", "mountPath": WEIGHTS_AUTH_MOUNT, "readOnly": True})
    # The pod's own image has `kaitopy weights pull`: no extra image to trust or mirror.
    return [
        {
            "name": "weights",
            "image": plan.image,
            "command": ["kaitopy"],
            "args": weights_pull_args(plan),
            "resources": WEIGHTS_PULL_RESOURCES,
            "volumeMounts": mounts,
        }
    ]


def weights_auth_volumes(plan: WeightsSource) -> list[dict[str, Any]]:
    if not (plan.weights_image and plan.weights_pull_secret):
        return []
    items = [{"key": ".dockerconfigjson", "path": "config.json"}]
    return [{"name": "weights-auth", "secret": {"secretName": plan.weights_pull_secret, "items": items}}]
