"""How many GPUs and nodes a model needs on a SKU, how to split it, and which runtime runs it.

The rule, stated once:
- Memory needed = weights + KV cache for one sequence of `max_model_len` tokens (16-bit cache).
- When the workspace does not set `max_model_len`, the model is admitted as Kaito admits it, on its
  weights: it must hold the weights plus the KV cache of a short context (`MIN_CONTEXT_TOKENS`).
  The plan then leaves the context open (`context_fixed` False) and the engine fits it to the GPU
  memory at start. The model's full context is still preferred when it fits as few nodes.
- Each GPU gives `GPU_MEMORY_UTILIZATION` of its memory (vLLM's default) less
  `PER_GPU_OVERHEAD_GIB` for the CUDA context, activations and communication buffers.
- vLLM runs where the GPU has compute capability >= 8.0 (Ampere or newer); older GPUs (V100, T4)
  get the transformers runtime, in float16 when the model ships bfloat16 (no bf16 before Ampere).
- Within a node, tensor parallelism over the fewest GPUs that hold the model (the size must divide
  the node's GPU count and the model's attention heads). Across nodes, pipeline parallelism with one
  stage per node, each node using all of its usable GPUs for tensor parallelism. The transformers
  runtime and models not marked multi-node never span nodes.
- A CPU preset (engine transformers-cpu) needs no GPU memory: it runs the transformers engine on
  one node of any SKU, which its pod does not take a GPU of.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

from kaitopy.presets.catalog import GIB, Catalog, GpuSku, ModelPreset

Runtime = Literal["vllm", "transformers"]

GPU_MEMORY_UTILIZATION = 0.9
PER_GPU_OVERHEAD_GIB = 1.0
VLLM_MIN_COMPUTE_CAPABILITY = 8.0
SHOWN_SKUS = 8
MIN_CONTEXT_TOKENS = 2048
"""The shortest context a model is admitted for when max_model_len is not set: below it a chat
turn with a system prompt does not fit, so a smaller GPU would only fail in use."""
MAX_NODES = 16
"""A plan needing more nodes than this is refused: a mistake more often than an intent."""


class EstimateError(ValueError):
    """The model cannot run as asked."""


class DoesNotFit(EstimateError):
    """The model does not fit on the SKU; the message says how much is needed and what fits."""

    def __init__(self, message: str, *, required_gib: float, fitting_skus: tuple[str, ...]) -> None:
        super().__init__(message)
        self.required_gib = required_gib
        self.fitting_skus = fitting_skus


@dataclass(frozen=True)
class Plan:
    """How to run a model on a SKU."""

    model: str
    instance_type: str
    node_count: int
    gpus_per_node: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    runtime: Runtime
    max_model_len: int
    dtype: str
    storage_gib: int
    """Disk for the weights on each node (with room for the download and conversion)."""
    required_gib: float
    """GPU memory the model needs: weights plus KV cache for max_model_len tokens."""
    usable_gib_per_gpu: float
    gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION
    context_fixed: bool = True
    """Whether the server is started with max_model_len; False when the workspace did not set it and
    the engine fits the context to the memory it finds (max_model_len is then what was sized for)."""

    @property
    def total_gpus(self) -> int:
        return self.node_count * self.gpus_per_node


def runtime_for(sku: GpuSku) -> Runtime:
    return "vllm" if sku.compute_capability >= VLLM_MIN_COMPUTE_CAPABILITY else "transformers"


def usable_gib_per_gpu(sku: GpuSku) -> float:
    return sku.gpu_memory_per_gpu_gib * GPU_MEMORY_UTILIZATION - PER_GPU_OVERHEAD_GIB


def required_gib(model: ModelPreset, max_model_len: int) -> float:
    return (model.weights_bytes + model.kv_bytes_per_token * max_model_len) / GIB


def storage_gib(model: ModelPreset) -> int:
    # A quarter more than the weights (partial downloads, converted shards) plus 10 GiB for the
    # image and caches, in whole tens.
    return math.ceil((model.weights_gib * 1.25 + 10) / 10) * 10


def estimate(
    model: ModelPreset, sku: GpuSku, *, max_model_len: int | None = None, catalog: Catalog | None = None
) -> Plan:
    """The plan for `model` on `sku`; raises `DoesNotFit` (naming the memory needed and the SKUs
    that fit) or `EstimateError` for an impossible request."""
    length = model.max_context if max_model_len is None else max_model_len
    if length < 1 or length > model.max_context:
        raise EstimateError(
            f"max_model_len {length} is outside 1..{model.max_context}, the context {model.name} supports"
        )
    result = _plan(model, sku, length) if max_model_len is not None else _open_plan(model, sku)
    if isinstance(result, Plan):
        return result
    if max_model_len is None:
        length = _admission_context(model)
    need = required_gib(model, length)
    fitting = tuple(fitting_skus(model, (catalog or Catalog.load()).skus.values(), max_model_len=length))
    shown = ", ".join(fitting[:SHOWN_SKUS]) + (
        f" and {len(fitting) - SHOWN_SKUS} more" if len(fitting) > SHOWN_SKUS else ""
    )
    advice = [f"instance types that fit: {shown}" if fitting else "no known instance type fits"]
    longest = longest_context(model, sku)
    if longest is not None and longest < length:
        advice.append(f"or set max_model_len to {longest} or less to fit {sku.instance_type}")
    raise DoesNotFit(
        f"{model.name} needs {need:.1f} GiB of GPU memory ({model.weights_gib:.1f} GiB weights + "
        f"{need - model.weights_gib:.1f} GiB KV cache for {length} tokens) but {sku.describe()} "
        f"{result}; {'; '.join(advice)}",
        required_gib=need,
        fitting_skus=fitting,
    )


def fitting_skus(
    model: ModelPreset, skus: Iterable[GpuSku], *, max_model_len: int | None = None
) -> list[str]:
    """Instance types the model fits on, fewest nodes first, then least GPU memory."""
    plans = [
        p
        for s in skus
        if isinstance(
            p := _open_plan(model, s) if max_model_len is None else _plan(model, s, max_model_len), Plan
        )
    ]
    by_sku = {s.instance_type: s for s in skus}
    plans.sort(key=lambda p: (p.node_count, by_sku[p.instance_type].gpu_memory_gib, p.instance_type))
    return [p.instance_type for p in plans]


def longest_context(model: ModelPreset, sku: GpuSku) -> int | None:
    """The longest max_model_len that fits on one node of `sku`, None when even the weights do not."""
    if model.on_cpu:
        return model.max_context
    room = usable_gib_per_gpu(sku) * _usable_gpus(model, sku) * GIB - model.weights_bytes
    if room <= 0 or sku.compute_capability < model.min_compute_capability:
        return None
    tokens = int(room // model.kv_bytes_per_token)
    # Round down to a multiple of 1024, the granularity people choose contexts in.
    tokens = min(model.max_context, tokens - tokens % 1024)
    return tokens if tokens >= 1024 else None


def _usable_gpus(model: ModelPreset, sku: GpuSku) -> int:
    """The most GPUs of one node the model can be split over."""
    if runtime_for(sku) == "transformers":
        return sku.gpu_count  # accelerate spreads layers over every GPU of the node
    return max(t for t in _divisors(sku.gpu_count) if model.attention_heads % t == 0)


def _admission_context(model: ModelPreset) -> int:
    return min(model.max_context, MIN_CONTEXT_TOKENS)


def _open_plan(model: ModelPreset, sku: GpuSku) -> Plan | str:
    """The plan when the workspace leaves max_model_len unset: sized for the full context when that
    takes no more nodes than the weights alone need, else for the admission context; either way the
    engine fits the context to the memory at start."""
    if model.on_cpu:
        return _plan(model, sku, model.max_context)
    short = _plan(model, sku, _admission_context(model))
    if not isinstance(short, Plan):
        return short
    full = _plan(model, sku, model.max_context)
    chosen = full if isinstance(full, Plan) and full.node_count <= short.node_count else short
    return replace(chosen, context_fixed=False)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _plan(model: ModelPreset, sku: GpuSku, length: int) -> Plan | str:
    """A plan, or why there is none (a phrase completing "but <sku> ...")."""
    if model.on_cpu:
        return _cpu_plan(model, sku, length)
    if sku.compute_capability < model.min_compute_capability:
        return (
            f"has compute capability {sku.compute_capability:.1f} and {model.name} needs "
            f"{model.min_compute_capability:.1f} or newer"
        )
    runtime = runtime_for(sku)
    dtype = "float16" if model.dtype == "bfloat16" and not sku.supports_bfloat16 else model.dtype
    need = required_gib(model, length)
    per_gpu = usable_gib_per_gpu(sku)
    gpus = math.ceil(need / per_gpu)

    def plan(nodes: int, gpus_per_node: int, tp: int, pp: int) -> Plan:
        return Plan(
            model=model.name,
            instance_type=sku.instance_type,
            node_count=nodes,
            gpus_per_node=gpus_per_node,
            tensor_parallel_size=tp,
            pipeline_parallel_size=pp,
            runtime=runtime,
            max_model_len=length,
            dtype=dtype,
            storage_gib=storage_gib(model),
            required_gib=need,
            usable_gib_per_gpu=per_gpu,
        )

    if runtime == "transformers":
        if gpus <= sku.gpu_count:
            return plan(1, gpus, 1, 1)
        return (
            f"gives {per_gpu * sku.gpu_count:.1f} GiB usable per node, and the transformers runtime its "
            f"{sku.gpu_model} GPUs need (no vLLM below compute capability 8.0) cannot span nodes"
        )
    for tp in _divisors(sku.gpu_count):
        if tp >= gpus and model.attention_heads % tp == 0:
            return plan(1, tp, tp, 1)
    tp = _usable_gpus(model, sku)
    per_node = per_gpu * tp
    if not model.supports_multi_node:
        return f"gives {per_node:.1f} GiB usable per node and {model.name} cannot span nodes"
    nodes = math.ceil(need / per_node)
    if nodes > MAX_NODES or nodes > model.layers:
        return (
            f"gives {per_node:.1f} GiB usable per node, so it would take {nodes} nodes (at most {MAX_NODES})"
        )
    return plan(nodes, tp, tp, nodes)


def _cpu_plan(model: ModelPreset, sku: GpuSku, length: int) -> Plan:
    # The preset's node count of the SKU (the workspace asked for it), one pipeline stage on each;
    # gpus_per_node stays 1 so the nodes are provisioned and recognised as that SKU's, but the
    # model server takes no GPU.
    return Plan(
        model=model.name,
        instance_type=sku.instance_type,
        node_count=model.cpu_nodes,
        gpus_per_node=1,
        tensor_parallel_size=1,
        pipeline_parallel_size=model.cpu_nodes,
        runtime=model.cpu_runtime,
        max_model_len=length,
        dtype=model.dtype,
        storage_gib=storage_gib(model),
        required_gib=0.0,
        usable_gib_per_gpu=usable_gib_per_gpu(sku),
    )


TuningMethod = Literal["lora", "qlora"]
QLORA_WEIGHT_FRACTION = 0.3
"""4-bit weights plus quantization scales, relative to the 16-bit checkpoint."""
TUNING_HEADROOM_FRACTION = 0.25
TUNING_FIXED_GIB = 2.0


def tuning_required_gib(model: ModelPreset, method: TuningMethod) -> float:
    """GPU memory to fine-tune: the base weights (4-bit for QLoRA), plus a quarter of the 16-bit
    weights for activations, adapter gradients and optimizer state, plus a fixed 2 GiB."""
    base = model.weights_gib * (QLORA_WEIGHT_FRACTION if method == "qlora" else 1.0)
    return base + model.weights_gib * TUNING_HEADROOM_FRACTION + TUNING_FIXED_GIB


def check_tuning_fits(
    model: ModelPreset, sku: GpuSku, method: TuningMethod, *, catalog: Catalog | None = None
) -> None:
    """Raise `DoesNotFit` unless fine-tuning `model` with `method` fits one node of `sku` (tuning
    jobs do not span nodes). A model that trains on CPU needs no GPU memory (the scheduler finds
    the host memory its Job requests), and cannot use qlora (EstimateError)."""
    if model.on_cpu:
        if method == "qlora":
            raise EstimateError(
                f"{model.name} trains on CPU, and qlora's 4-bit kernels (bitsandbytes) need a CUDA GPU; "
                "use lora"
            )
        return
    need = tuning_required_gib(model, method)
    have = usable_gib_per_gpu(sku) * sku.gpu_count
    if need <= have:
        return
    skus = (catalog or Catalog.load()).skus.values()
    fitting = tuple(
        s.instance_type
        for s in sorted(skus, key=lambda s: (s.gpu_memory_gib, s.instance_type))
        if tuning_required_gib(model, method) <= usable_gib_per_gpu(s) * s.gpu_count
    )
    shown = ", ".join(fitting[:SHOWN_SKUS]) + (
        f" and {len(fitting) - SHOWN_SKUS} more" if len(fitting) > SHOWN_SKUS else ""
    )
    other = " or use qlora" if method == "lora" and tuning_required_gib(model, "qlora") <= have else ""
    raise DoesNotFit(
        f"{method} tuning of {model.name} needs {need:.1f} GiB of GPU memory on one node but "
        f"{sku.describe()} gives {have:.1f} GiB usable; "
        + (f"instance types that fit: {shown}" if fitting else "no known instance type fits")
        + other,
        required_gib=need,
        fitting_skus=fitting,
    )
