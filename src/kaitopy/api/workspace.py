"""The Workspace object as pydantic models.

Kaito's layout is kept: `resource`, `inference` and `tuning` sit at the top level of the object
(there is no `spec`), and `status` is a subresource. Python attributes are snake_case; the wire
names (aliases) are Kaito's camelCase, so `Workspace.model_validate(raw)` reads what the API server
returns and `ws.to_dict()` writes it back. The CRD schema is generated from these classes
(`kaitopy.api.crd`), with each field's docstring as its OpenAPI description; `json_schema_extra`
carries the CEL rules and Kubernetes extensions the generator copies through.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from kaitopy.api import messages
from kaitopy.api.constants import DEFAULT_INSTANCE_TYPE, GROUP, MAX_ADAPTERS, MAX_NODE_COUNT, STORAGE_VERSION

SCHEMALESS: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}
# A string holding a float in [0, 1]: "0", "0.25", "1", "1.0". No backslashes: it is also a CEL string.
STRENGTH_PATTERN = r"^(0([.][0-9]+)?|1([.]0+)?|[.][0-9]+)$"
NAME_MAX = 253


def _plain(value: Any) -> Any:
    """Deep copy into dicts and lists: objects from the informer cache arrive frozen (mapping
    proxies and tuples), which schemaless fields would otherwise keep and could not serialize."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


Schemaless = Annotated[dict[str, Any], BeforeValidator(_plain)]


def cel(
    rule: str, message: str, *, reason: str = "FieldValueForbidden", field_path: str | None = None
) -> dict[str, Any]:
    """A CEL rule of the schema. The reason and field path make the API server say
    `<field>: Forbidden: <message>` (or `Required value:`), not `<nil>: Invalid value: "object":
    <message>`, which names neither the field nor the value."""
    out = {"rule": rule, "message": message, "reason": reason}
    if field_path is not None:
        out["fieldPath"] = field_path
    return out


def _immutable(message: str) -> dict[str, Any]:
    return {"x-kubernetes-validations": [cel("self == oldSelf", message)]}


class ApiModel(BaseModel):
    """Shared configuration: camelCase on the wire, docstrings as descriptions, unknown fields
    ignored (the API server prunes them before we ever see them)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        use_attribute_docstrings=True,
        extra="ignore",
    )

    def to_dict(self) -> dict[str, Any]:
        """The wire form: camelCase keys, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class LabelSelectorRequirement(ApiModel):
    """One set-based requirement of a label selector."""

    key: str
    """The label key the requirement applies to."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key relates to the values."""
    values: list[str] | None = None
    """The values for In and NotIn; empty for Exists and DoesNotExist."""


class LabelSelector(ApiModel):
    """A Kubernetes label selector (metav1.LabelSelector)."""

    match_labels: dict[str, str] | None = None
    """Labels a node must carry, key to value."""
    match_expressions: list[LabelSelectorRequirement] | None = None
    """Set-based requirements, all of which must hold."""


class ResourceSpec(ApiModel):
    """The GPU nodes the workload runs on: the instance type to provision and the label selector
    that picks them (nodes carrying the selector's labels that already exist are used first)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(oldSelf.count) || (has(self.count) && self.count == oldSelf.count)",
                    messages.IMMUTABLE_COUNT,
                    field_path=".count",
                )
            ]
        }
    )

    instance_type: str = Field(
        default=DEFAULT_INSTANCE_TYPE,
        min_length=1,
        max_length=NAME_MAX,
        json_schema_extra=_immutable(messages.IMMUTABLE_INSTANCE_TYPE),
    )
    """The cloud instance type of each GPU node, e.g. Standard_NC24ads_A100_v4 or p5.48xlarge.
    Immutable."""
    count: int | None = Field(default=1, ge=1, le=MAX_NODE_COUNT)
    """Deprecated, and not used for presets: their node count is derived from the model and the
    instance type (status.targetNodeCount), whatever count says. For an inference template it is
    the number of nodes and pod replicas (at most 16). Immutable."""
    label_selector: LabelSelector = Field(json_schema_extra=_immutable(messages.IMMUTABLE_LABEL_SELECTOR))
    """Selects the GPU nodes for this workspace; provisioned nodes get these labels. Immutable."""
    preferred_nodes: list[str] | None = None
    """Deprecated: names of existing nodes to prefer. Accepted and ignored for placement."""
    partition: Schemaless | None = None
    """Kaito's GPU partitioning (MIG / accelerator mode). Not supported by kaitopy yet: a workspace
    that sets it is refused at admission with that reason."""


class PresetOptions(ApiModel):
    """Overrides for a preset."""

    image: str | None = None
    """Deprecated with private access mode: the image holding the model weights."""
    image_pull_secrets: list[str] | None = None
    """Secrets to pull a private image with."""
    model_access_secret: str | None = None
    """A Secret whose HF_TOKEN key grants access to a gated model on Hugging Face."""


class PresetSpec(ApiModel):
    """A model from kaitopy's catalog, by name."""

    name: str = Field(min_length=1, max_length=NAME_MAX)
    """The preset's name, e.g. phi-3-mini-4k-instruct or llama-3.3-70b-instruct (Kaito's names;
    Hugging Face ids of catalog models are accepted too)."""
    access_mode: Literal["public", "private"] | None = "public"
    """public: weights come from the public source; private: from presetOptions.image."""
    preset_options: PresetOptions | None = None
    """Options for the preset: image, pull secrets, access secret."""


class DataSource(ApiModel):
    """Where data (an adapter, training data) comes from: exactly one of urls, image or
    volumeSource."""

    name: str | None = Field(default=None, max_length=NAME_MAX)
    """A name for this source; adapters are known by it."""
    urls: list[str] | None = None
    """http(s) URLs to download the data from."""
    volume_source: Schemaless | None = Field(default=None, json_schema_extra=SCHEMALESS)
    """A Kubernetes volume source (e.g. persistentVolumeClaim) holding the data."""
    image: str | None = None
    """An image holding the data under /data."""
    image_pull_secrets: list[str] | None = None
    """Secrets to pull the image with."""


class DataDestination(ApiModel):
    """Where results go: an image to push, or a volume."""

    volume_source: Schemaless | None = Field(default=None, json_schema_extra=SCHEMALESS)
    """A Kubernetes volume source to write the results into."""
    image: str | None = None
    """The image to push the results to."""
    image_push_secret: str | None = None
    """A docker-registry Secret allowed to push image."""


class AdapterSpec(ApiModel):
    """A LoRA adapter loaded on top of the served model."""

    source: DataSource | None = None
    """Where the adapter comes from; source.name names the adapter in requests."""
    strength: str | None = Field(
        default="1.0",
        max_length=32,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    **cel(f"self.matches('{STRENGTH_PATTERN}')", messages.ADAPTER_STRENGTH),
                    # The value itself, which the API server does not echo for a CEL refusal.
                    "messageExpression": f"'{messages.ADAPTER_STRENGTH}; got \"' + self + '\"'",
                }
            ]
        },
    )
    """How strongly the adapter applies, a number in [0, 1] written as a string. Default "1.0"."""

    @field_validator("strength")
    @classmethod
    def _strength_in_range(cls, value: str | None) -> str | None:
        # A validator rather than `pattern` so the CRD carries the CEL rule with its message only.
        if value is not None and not re.fullmatch(STRENGTH_PATTERN, value):
            raise ValueError(messages.ADAPTER_STRENGTH)
        return value


class InferenceSpec(ApiModel):
    """Serve a model: a catalog preset (with optional adapters) or a custom pod template."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!(has(self.preset) && has(self.template))",
                    messages.PRESET_AND_TEMPLATE,
                    field_path=".template",
                ),
                cel(
                    "has(self.preset) || has(self.template)",
                    messages.PRESET_OR_TEMPLATE,
                    reason="FieldValueRequired",
                    field_path=".preset",
                ),
                cel(
                    "!has(self.preset) || !has(oldSelf.preset) || self.preset.name == oldSelf.preset.name",
                    messages.IMMUTABLE_INFERENCE_PRESET,
                    field_path=".preset.name",
                ),
            ]
        }
    )

    preset: PresetSpec | None = None
    """The catalog model to serve."""
    template: Schemaless | None = Field(default=None, json_schema_extra=SCHEMALESS)
    """A pod template (corev1.PodTemplateSpec) for a model the catalog does not know. Mutually
    exclusive with preset."""
    config: str | None = Field(default=None, max_length=NAME_MAX)
    """A ConfigMap in the workspace's namespace whose inference_config.yaml key holds runtime
    settings (vLLM arguments, max-model-len, ...). A default is used when empty."""
    adapters: list[AdapterSpec] | None = Field(
        default=None,
        max_length=MAX_ADAPTERS,
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.all(a, !has(a.source) || !has(a.source.name) || "
                    "self.filter(b, has(b.source) && has(b.source.name) && b.source.name == a.source.name)"
                    ".size() == 1)",
                    messages.ADAPTER_NAMES_UNIQUE,
                )
            ]
        },
    )
    """LoRA adapters to load with the preset model, at most 10, each with a unique source.name.
    Adapters may be added, removed or changed after creation."""

    @field_validator("template")
    @classmethod
    def _template_is_a_pod_template(cls, value: Schemaless | None) -> Schemaless | None:
        # The schema leaves the template open (any PodTemplateSpec field), so its shape is checked
        # here: a template the API server would refuse as a Deployment's must be refused at apply.
        if value is None:
            return value
        problem = template_problem(value)
        if problem:
            raise ValueError(messages.TEMPLATE_SHAPE.format(problem=problem))
        return value


def template_problem(template: Any) -> str | None:
    if not isinstance(template, dict):
        return "the template is not an object"
    for section in ("metadata", "spec"):
        if section in template and not isinstance(template[section], dict):
            return f"{section} is {type(template[section]).__name__}, not an object"
    containers = (template.get("spec") or {}).get("containers")
    if not isinstance(containers, list) or not containers:
        return "spec.containers is missing or empty"
    if not all(isinstance(c, dict) for c in containers):
        return "every entry of spec.containers must be an object"
    return None


class TuningSpec(ApiModel):
    """Fine-tune a catalog model with LoRA or QLoRA and publish the adapter."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.preset) || !has(oldSelf.preset) || self.preset.name == oldSelf.preset.name",
                    messages.IMMUTABLE_TUNING_PRESET,
                    field_path=".preset.name",
                ),
                cel(
                    "!has(self.method) || !has(oldSelf.method) || self.method == oldSelf.method",
                    messages.IMMUTABLE_TUNING_METHOD,
                    field_path=".method",
                ),
            ]
        }
    )

    preset: PresetSpec | None = None
    """The catalog model to fine-tune."""
    method: Literal["lora", "qlora"] | None = "lora"
    """lora, or qlora (4-bit quantized base model, less GPU memory). Immutable."""
    config: str | None = Field(default=None, max_length=NAME_MAX)
    """A ConfigMap in the workspace's namespace whose training_config.yaml key holds the training
    settings. A default for the method is used when empty."""
    input: DataSource | None = None
    """The training data: exactly one of urls, image or volumeSource."""
    output: DataDestination | None = None
    """Where the trained adapter goes: image (with imagePushSecret) or volumeSource."""


class Condition(ApiModel):
    """A status condition (metav1.Condition)."""

    type: str
    """The condition's type, e.g. ResourceReady or InferenceReady."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    observed_generation: int | None = None
    """The metadata.generation the condition was set for."""
    last_transition_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    """When the status last changed."""
    reason: str | None = None
    """A CamelCase reason for the last transition."""
    message: str | None = None
    """A human-readable explanation."""


class StartupPhase(ApiModel):
    """One phase of a start-up, as the cluster recorded it."""

    name: str
    """NodeProvisioning, Scheduling, ImagePull, WeightsDownload, AdaptersDownload or EngineStart."""
    started_at: str = Field(json_schema_extra={"format": "date-time"})
    """When the phase began."""
    finished_at: str = Field(json_schema_extra={"format": "date-time"})
    """When it ended."""
    seconds: float
    """Time spent in the phase (for ImagePull, pulling only: its pulls may be apart)."""


class StartupRecord(ApiModel):
    """Where the last start-up's time went: from the workspace's creation (or, for a later
    revision, the rollout's first pod) to its model being served."""

    revision: str
    """The workload revision that started."""
    started_at: str = Field(json_schema_extra={"format": "date-time"})
    """When the start-up began."""
    ready_at: str = Field(json_schema_extra={"format": "date-time"})
    """When the model was first served (the pod's first passing readiness probe)."""
    seconds: float
    """From startedAt to readyAt."""
    phases: list[StartupPhase] = Field(default_factory=list)
    """Where the time went, in the order the phases began (they may overlap)."""


class AdapterStatus(ApiModel):
    """One adapter of a running inference workspace, as its model server reports it (hot-load)."""

    name: str
    """The adapter's name (spec.inference.adapters[].source.name)."""
    image: str | None = None
    """The image the adapter is pulled from."""
    strength: str | None = None
    """The strength it is served at."""
    state: str
    """Pending (not delivered to the server yet), Pulling, Loading, Ready or Failed."""
    reason: str | None = None
    """Why it is not Ready, naming the pod."""


class WorkspaceStatus(ApiModel):
    """The observed state of a workspace."""

    worker_nodes: list[str] | None = None
    """The nodes the workload runs on."""
    conditions: list[Condition] | None = Field(
        default=None,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """The workspace's conditions: ResourceReady, NodeClaimReady, InferenceReady, JobStarted,
    WorkspaceSucceeded, WorkspaceDeleting."""
    state: str | None = None
    """A one-word summary: Pending, Running, Ready, Succeeded, Failed or Deleting."""
    target_node_count: int | None = None
    """How many GPU nodes the workload needs."""
    startup: StartupRecord | None = None
    """The timeline of the last start-up that reached Ready (inference)."""
    adapters: list[AdapterStatus] | None = None
    """Each LoRA adapter's state on the running model server: adapters added, changed or removed
    on a running workspace are loaded and unloaded without restarting it."""

    def condition(self, type_: str) -> Condition | None:
        for c in self.conditions or ():
            if c.type == type_:
                return c
        return None


class Workspace(ApiModel):
    """A Workspace: GPU nodes plus a model to serve (inference) or fine-tune (tuning)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.inference) || has(self.tuning)",
                    messages.EXACTLY_ONE_OF,
                    reason="FieldValueRequired",
                    field_path=".inference",
                ),
                cel(
                    "!(has(self.inference) && has(self.tuning))",
                    messages.EXACTLY_ONE_OF,
                    field_path=".tuning",
                ),
                cel(
                    "has(self.inference) == has(oldSelf.inference) && has(self.tuning) == has(oldSelf.tuning)",
                    messages.NO_TOGGLE,
                    field_path=".inference",
                ),
            ]
        }
    )

    api_version: str = f"{GROUP}/{STORAGE_VERSION}"
    """The versioned schema of this object."""
    kind: str = "Workspace"
    """Workspace."""
    metadata: Schemaless = Field(default_factory=dict)
    """Standard object metadata."""
    resource: ResourceSpec
    """The GPU nodes: instance type and label selector."""
    inference: InferenceSpec | None = None
    """Serve a model. Exactly one of inference and tuning."""
    tuning: TuningSpec | None = None
    """Fine-tune a model. Exactly one of inference and tuning."""
    status: WorkspaceStatus | None = None
    """The observed state, written by the controller."""

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", ""))

    @property
    def preset_name(self) -> str | None:
        """The preset named by inference or tuning, if any."""
        spec = self.inference or self.tuning
        return spec.preset.name if spec is not None and spec.preset is not None else None
