"""The model and GPU catalogs, loaded from the YAML data files shipped in the package."""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

GIB = 1024**3
HF_MODEL_ID = re.compile(r"[^/\s]+/[^/\s]+")
"""What Kaito takes for a Hugging Face model id in preset.name: "<org>/<model>"."""


class CatalogError(LookupError):
    """A name the catalog does not know."""


class UnknownPreset(CatalogError):
    """No model has this name."""


class UnknownInstanceType(CatalogError):
    """No GPU SKU has this instance type."""


Engine = Literal["auto", "transformers-cpu", "vllm-cpu"]
CPU_ENGINES: tuple[Engine, ...] = ("transformers-cpu", "vllm-cpu")
WeightsSource = Literal["huggingface", "oci"]


class CpuResources(BaseModel):
    """What a model server running on CPU asks of its node (Kubernetes quantities)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu_request: str
    """Cores the scheduler reserves: kept below a small node's whole count, so the pod still
    fits a node where other pods request a little CPU."""
    cpu_limit: str
    """Cores the server may use; torch's thread pool is sized to them (OMP_NUM_THREADS)."""
    memory_request: str
    memory_limit: str


class ModelPreset(BaseModel):
    """A model kaitopy knows how to run: where its weights are and what it needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    """Kaito's preset name, the one users write in inference.preset.name."""
    hf_id: str
    """The Hugging Face repository of the weights."""
    params_b: float = Field(gt=0)
    """Parameters, in billions."""
    weights_bytes: int = Field(gt=0)
    """Size of the released checkpoint."""
    max_context: int = Field(gt=0)
    """The longest context the model supports, in tokens."""
    layers: int = Field(gt=0)
    attention_heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    kv_bytes_per_token: int = Field(gt=0)
    """KV-cache bytes one token takes with a 16-bit cache, over all layers."""
    kv_lora_rank: int | None = Field(default=None, gt=0)
    """Multi-head latent attention (DeepSeek-V3 style): the rank of the compressed KV vector, which
    the cache holds once per layer instead of K and V per head."""
    qk_rope_head_dim: int | None = Field(default=None, gt=0)
    """Multi-head latent attention: the rotary part of the key, cached beside the latent vector."""
    dtype: Literal["bfloat16", "float16", "float32"]
    """The dtype the weights were released in (for a quantized checkpoint, of its unquantized
    tensors and activations)."""
    quantization: Literal["fp8", "mxfp4"] | None = None
    """How a quantized checkpoint stores its weights (vLLM reads the details from config.json);
    None for a 16-bit one. weights_bytes is the quantized size."""
    min_compute_capability: float = 7.0
    """The oldest CUDA compute capability the model's kernels run on."""
    supports_lora: bool
    """Whether LoRA adapters can be loaded for inference."""
    supports_tuning: bool
    """Whether kaitopy can fine-tune it (LoRA/QLoRA)."""
    supports_multi_node: bool
    """Whether it may be split across nodes (pipeline parallel)."""
    tool_call_parser: str | None
    """vLLM's --tool-call-parser for it, None when it has no tool calling."""
    reasoning_parser: str | None
    """vLLM's --reasoning-parser for it, None when it does not reason."""
    gated: bool = False
    """Whether Hugging Face requires accepting a licence (a token via modelAccessSecret)."""
    legacy_names: tuple[str, ...] = ()
    """Other names that resolve to this model."""
    engine: Engine = "auto"
    """auto: vLLM or transformers on the node's GPUs, chosen by the SKU (see the estimator);
    transformers-cpu: the transformers engine on the node's CPU, for models small enough that a
    GPU buys nothing (the node still comes from the workspace's instance type); vllm-cpu: vLLM's
    CPU build on the node's CPU, over `cpu_nodes` nodes."""
    cpu_nodes: int = Field(default=1, ge=1, le=16)
    """CPU engines: the nodes the model is spread over, one pipeline stage on each (more than one
    needs engine vllm-cpu and supports_multi_node)."""
    variant_of: str | None = None
    """Another preset whose checkpoint this one serves another way (over more nodes, say): its
    weights artifact is that preset's, and the Hugging Face id names that preset, not this one."""
    weights_source: WeightsSource = "huggingface"
    """huggingface: the server downloads hf_id; oci: an init container pulls the weights artifact
    `<weights registry>/<name>:<weights_version>` (`kaitopy weights pull`), no Hugging Face access."""
    weights_version: str | None = None
    """The tag of the weights artifact (weights_source oci)."""
    cpu_resources: CpuResources | None = None
    """Pod CPU and memory (engine transformers-cpu), from the server's measured use."""

    @property
    def weights_gib(self) -> float:
        return self.weights_bytes / GIB

    @model_validator(mode="after")
    def _kv_matches_architecture(self) -> ModelPreset:
        if (self.kv_lora_rank is None) != (self.qk_rope_head_dim is None):
            raise ValueError(f"{self.name}: kv_lora_rank and qk_rope_head_dim go together (latent attention)")
        if self.kv_lora_rank is not None and self.qk_rope_head_dim is not None:
            computed = self.layers * (self.kv_lora_rank + self.qk_rope_head_dim) * 2
            formula = "layers * (kv_lora_rank + qk_rope_head_dim) * 2"
        else:
            computed = 2 * self.layers * self.kv_heads * self.head_dim * 2
            formula = "2 * layers * kv_heads * head_dim * 2"
        if computed != self.kv_bytes_per_token:
            raise ValueError(
                f"{self.name}: kv_bytes_per_token {self.kv_bytes_per_token} does not match "
                f"{formula} = {computed}"
            )
        return self

    @model_validator(mode="after")
    def _runtime_fields_agree(self) -> ModelPreset:
        if self.on_cpu and self.cpu_resources is None:
            raise ValueError(f"{self.name}: engine {self.engine} needs cpu_resources (cpu, memory)")
        if not self.on_cpu and self.cpu_resources is not None:
            raise ValueError(f"{self.name}: cpu_resources apply to the CPU engines only")
        if self.cpu_nodes > 1 and (self.engine != "vllm-cpu" or not self.supports_multi_node):
            raise ValueError(f"{self.name}: cpu_nodes above 1 needs engine vllm-cpu and supports_multi_node")
        if self.cpu_nodes > self.layers:
            raise ValueError(f"{self.name}: {self.cpu_nodes} pipeline stages but only {self.layers} layers")
        if self.quantization is not None and self.min_compute_capability < 8.0:
            raise ValueError(
                f"{self.name}: {self.quantization} weights need vLLM's kernels: "
                "min_compute_capability 8.0 or more"
            )
        if self.weights_source == "oci" and not self.weights_version:
            raise ValueError(f"{self.name}: weights_source oci needs weights_version (the artifact's tag)")
        return self

    @property
    def on_cpu(self) -> bool:
        return self.engine in CPU_ENGINES

    @property
    def cpu_runtime(self) -> Literal["vllm", "transformers"]:
        """The engine a CPU preset's server runs (`kaitopy serve --engine`)."""
        return "vllm" if self.engine == "vllm-cpu" else "transformers"

    @property
    def weights_name(self) -> str:
        """The repository of its weights artifact under the weights registry (weights_source oci)."""
        return self.variant_of or self.name


class GpuSku(BaseModel):
    """A GPU instance type of a cloud."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instance_type: str
    cloud: Literal["azure", "aws", "gcp"]
    gpu_count: int = Field(gt=0)
    gpu_model: str
    gpu_memory_gib: float = Field(gt=0)
    """Total GPU memory of the node, over all its GPUs."""
    compute_capability: float
    """CUDA compute capability, e.g. 7.0 for V100, 8.0 for A100."""
    nvme: bool
    """Whether the node has local NVMe disks (fast weight loading)."""

    @property
    def gpu_memory_per_gpu_gib(self) -> float:
        return self.gpu_memory_gib / self.gpu_count

    @property
    def supports_bfloat16(self) -> bool:
        return self.compute_capability >= 8.0

    def describe(self) -> str:
        return f"{self.instance_type} ({self.gpu_count}x {self.gpu_model}, {self.gpu_memory_gib:g} GiB)"


class Catalog:
    """Immutable lookup over the models and SKUs. `Catalog.load()` reads the packaged data once."""

    def __init__(self, models: list[ModelPreset], skus: list[GpuSku]) -> None:
        self._models = MappingProxyType({m.name: m for m in models})
        self._skus = MappingProxyType({s.instance_type: s for s in skus})
        aliases: dict[str, ModelPreset] = {}
        for m in models:
            if m.variant_of is not None:
                base = self._models.get(m.variant_of)
                if base is None or base.variant_of is not None:
                    raise ValueError(f"{m.name}: variant_of {m.variant_of!r} is not a preset of its own")
                if (base.hf_id, base.weights_source, base.weights_version) != (
                    m.hf_id,
                    m.weights_source,
                    m.weights_version,
                ):
                    raise ValueError(
                        f"{m.name}: a variant serves {base.name}'s checkpoint: same hf_id and weights"
                    )
            # A variant's Hugging Face id names the preset it varies.
            own = (m.name, *m.legacy_names) if m.variant_of else (m.name, m.hf_id, *m.legacy_names)
            for alias in own:
                key = alias.lower()
                other = aliases.get(key)
                if other is not None and other.name != m.name:
                    raise ValueError(f"model name {alias!r} is used by both {other.name} and {m.name}")
                aliases[key] = m
        self._aliases = MappingProxyType(aliases)
        self._sku_keys = MappingProxyType({s.instance_type.lower(): s for s in skus})

    @classmethod
    def load(cls) -> Catalog:
        return _packaged()

    @classmethod
    def from_data(cls, models: Mapping[str, Any], skus: Mapping[str, Any]) -> Catalog:
        return cls(
            [ModelPreset.model_validate(m) for m in models["models"]],
            [GpuSku.model_validate(s) for s in skus["skus"]],
        )

    @property
    def models(self) -> Mapping[str, ModelPreset]:
        return self._models

    @property
    def skus(self) -> Mapping[str, GpuSku]:
        return self._skus

    def model(self, name: str) -> ModelPreset:
        """The model by Kaito preset name, legacy name or Hugging Face id (any case)."""
        found = self._aliases.get(name.strip().lower())
        if found is not None:
            return found
        if HF_MODEL_ID.fullmatch(name.strip()):
            # Kaito admits any "<org>/<model>" and sizes it from the hub's config.json at run time;
            # kaitopy sizes at admission from its own catalog, so an id outside it is refused here.
            ids = {m.hf_id.lower(): m.hf_id for m in self._models.values()}
            near = difflib.get_close_matches(name.strip().lower(), list(ids), n=2, cutoff=0.8)
            raise UnknownPreset(
                f"preset {name!r} is a Hugging Face model id outside kaitopy's catalog"
                + (f" (did you mean {' or '.join(ids[n] for n in near)}?)" if near else "")
                + ": serving any "
                "Hugging Face model with a vLLM-supported architecture (Kaito's <org>/<model> presets) "
                "is not supported by kaitopy yet; use a catalog preset "
                f"({', '.join(sorted(self._models))}) or inference.template with your own image"
            )
        close = difflib.get_close_matches(name.lower(), list(self._models), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise UnknownPreset(
            f"unknown preset {name!r}{hint} Supported presets: {', '.join(sorted(self._models))}"
            if not close
            else f"unknown preset {name!r}{hint}"
        )

    def sku(self, instance_type: str) -> GpuSku:
        """The SKU by instance type (any case)."""
        found = self._sku_keys.get(instance_type.strip().lower())
        if found is not None:
            return found
        if instance_type.startswith("<") and instance_type.endswith(">"):
            raise UnknownInstanceType(
                f"instance type {instance_type!r} is a placeholder: replace it with your nodes' instance "
                f"type, one of {', '.join(self._skus)}"
            )
        close = difflib.get_close_matches(instance_type.lower(), list(self._sku_keys), n=3, cutoff=0.6)
        hint = (
            f" (did you mean {' or '.join(self._sku_keys[c].instance_type for c in close)}?)" if close else ""
        )
        supported = ", ".join(self._skus)
        raise UnknownInstanceType(
            f"unknown instance type {instance_type!r}{hint}; supported instance types: {supported}"
        )


def _read(name: str) -> Any:
    text = resources.files("kaitopy.presets").joinpath("data", name).read_text(encoding="utf-8")
    return yaml.safe_load(text)


@functools.cache
def _packaged() -> Catalog:
    # The packaged files never change within a process; loading once is a cache, not state.
    return Catalog.from_data(_read("models.yaml"), _read("skus.yaml"))
