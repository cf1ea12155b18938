"""Pod Security "restricted" for the pods kaitopy builds from presets: one place that says which
user the pods run as, what they may not do, and where they may write. Pure: dicts in, dicts out.

The model server, its init containers and the tuning steps all run as RUN_AS_UID, with no
privilege escalation, no capabilities, the runtime's default seccomp profile and a read-only root
filesystem; what the engines write goes to emptyDirs (WRITABLE_DIRS) with a size limit each. A
user's own template (`inference.template`) is never changed here: it runs as the user wrote it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

RUN_AS_UID = 65532
"""The images' user (docker/*/Dockerfile `USER 65532:65532`): the distroless "nonroot" id, the
same as the operator's own image."""

HOME = "/home/kaitopy"
TMP_SIZE_LIMIT = "10Gi"
"""/tmp: vLLM's, torch's and triton's scratch (a multi-node rank's included), and `tune push`'s layer tar and
its gzip while it builds them (about twice the adapter's size)."""
HOME_SIZE_LIMIT = "20Gi"
"""$HOME/.cache: Hugging Face's hub cache and tokens, torch.compile/triton/flashinfer kernel
caches (a few GiB for vLLM's CUDA graphs and compiled kernels)."""
SHM_SIZE_LIMIT = "16Gi"
"""/dev/shm (memory-backed, counts against the pod's memory): NCCL and torch DataLoader buffers."""
TOOLS_SIZE_LIMIT = "64Mi"
"""The static busybox copied for shell-free adapter and data images (about 1 MiB)."""
ADAPTERS_SIZE_LIMIT = "20Gi"
"""All of a workspace's LoRA adapters together (each is MiBs to a few GiB)."""

# Env that points every writer at the writable volumes: getpass (torch, triton) reads USER before
# it looks the uid up in /etc/passwd, which an image may not have for RUN_AS_UID.
WRITABLE_ENV: tuple[dict[str, str], ...] = (
    {"name": "HOME", "value": HOME},
    {"name": "USER", "value": "kaitopy"},
    {"name": "XDG_CACHE_HOME", "value": f"{HOME}/.cache"},
    {"name": "HF_HOME", "value": f"{HOME}/.cache/huggingface"},
    {"name": "TMPDIR", "value": "/tmp"},
)


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_UID,
        "runAsGroup": RUN_AS_UID,
        # emptyDirs and Secret files become group-owned by this gid, so the user can read and write them.
        "fsGroup": RUN_AS_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def writable_volumes() -> list[dict[str, Any]]:
    return [
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}},
        {"name": "home", "emptyDir": {"sizeLimit": HOME_SIZE_LIMIT}},
    ]


def writable_mounts() -> list[dict[str, Any]]:
    return [{"name": "tmp", "mountPath": "/tmp"}, {"name": "home", "mountPath": HOME}]


def with_env(container: dict[str, Any], extra: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The container's env plus `extra`, the container's own values winning on a clash."""
    own = list(container.get("env") or [])
    names = {e["name"] for e in own}
    return own + [dict(e) for e in extra if e["name"] not in names]


def harden(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` (a pod spec kaitopy built) with the restricted settings on the pod and on every
    container, init containers included, and the writable volumes mounted into each."""
    spec["securityContext"] = pod_security_context()
    # No pod of ours talks to the API server; a token in the pod is only something to steal.
    spec["automountServiceAccountToken"] = False
    spec["volumes"] = [*spec.get("volumes", []), *writable_volumes()]
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            container["securityContext"] = container_security_context()
            container["volumeMounts"] = [*container.get("volumeMounts", []), *writable_mounts()]
            container["env"] = with_env(container, WRITABLE_ENV)
    return spec


def size_limit_gib(gib: float) -> str:
    """A whole-GiB sizeLimit quantity, at least 1Gi."""
    return f"{max(1, int(-(-gib // 1)))}Gi"


def weights_size_limit(weights_gib: float) -> str:
    """The weights emptyDir's limit: twice the estimate (a hub download may hold more files than
    the weights, e.g. a second format), at least 10 GiB."""
    return size_limit_gib(max(10.0, 2 * weights_gib))
