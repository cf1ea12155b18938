"""Plan a vLLM OpenAI-server launch: the argv, the models it serves and, on multi-node, the group flags.

Everything here is pure: measured memory, the model's config.json and vLLM's known options are passed
in, so the planning is unit-tested without vLLM or torch and the sizing rules live in one place.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

GIB = 1024**3
# vLLM allocates the KV cache in blocks of this many tokens; a context length that is a multiple of it
# wastes nothing.
KV_BLOCK_TOKENS = 16
# Never plan a context shorter than this: a server that cannot hold a chat turn is a misconfiguration.
MIN_CONTEXT_TOKENS = 256
# GPU memory vLLM needs besides weights and KV cache (activations, CUDA graphs, NCCL buffers), per GPU.
GPU_ACTIVATION_RESERVE = 2 * GIB
# GPU memory left to other processes (the CUDA context of a sidecar, fragmentation).
GPU_HEADROOM = 512 * 1024**2
MAX_GPU_MEMORY_UTILIZATION = 0.95
# On CPU the KV cache lives in RAM beside the weights, the Python processes and the OS.
CPU_RESERVE = 2 * GIB
CPU_KV_FRACTION = 0.5
# vLLM's default --max-num-seqs: with this many full-length sequences the cache is never the limit.
DEFAULT_MAX_NUM_SEQS = 256
# On a CPU more sequences at once than this only share the same few cores: a bigger batch buys no
# throughput, and reserving their KV cache took most of the RAM (9.1 GiB for a 0.27 GB model).
CPU_MAX_NUM_SEQS = 8
# vLLM's own accounting of the cache pads what config.json implies (small heads: a tiny model's 512
# tokens needed a third more than 2 x layers x KV heads x head_dim x bytes), so the computed need gets
# a quarter on top and never less than this floor, which costs nothing next to the weights.
CPU_KV_SLACK = 1.25
CPU_KV_FLOOR = 128 * 1024**2
# The ranks vLLM accepts for --max-lora-rank (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "half": 2, "float": 4}
# Flags kaitopy owns: the serve flags and the plan set them, the config file may not.
_RESERVED_KEYS = {
    "model": "the model is --model-dir",
    "served-model-name": "use --served-model-name",
    "host": "the engine binds vLLM to 127.0.0.1 behind kaitopy's server",
    "port": "the engine picks vLLM's internal port",
    "lora-modules": "adapters are discovered in --adapter-dir",
    "dtype": "use --dtype",
    # A ConfigMap is readable by anyone who may read the namespace's config and is logged by vLLM.
    "api-key": "the model server's API key comes from a Secret (kaitopy serve --api-key-file or "
    "$KAITOPY_API_KEY)",
    "hf-token": "a token does not belong in a ConfigMap; put it in a Secret and pass it as $HF_TOKEN",
    # A multi-node group's shape comes from its StatefulSet (kaitopy serve --role-from-pod-name).
    "nnodes": "the operator sets a multi-node group's size from the workspace's nodes",
    "node-rank": "each multi-node pod's rank is its StatefulSet ordinal",
    "master-addr": "multi-node pods find their leader by its DNS name (--leader-address)",
    "master-port": "use kaitopy serve --leader-port",
    "headless": "multi-node workers run headless by themselves",
}
RESERVED_KEYS = _RESERVED_KEYS  # also refused at admission (webhooks/configs.py)
# Set by the operator from the workspace's GPUs and nodes; Kaito's examples still put them in the
# ConfigMap (kaito_workspace_custom_config.yaml: tensor-parallel-size 2), so noted, not fatal.
OPERATOR_SET_KEYS = {
    "tensor-parallel-size": "the operator sets it from the workspace's GPUs (--tensor-parallel-size)",
    "pipeline-parallel-size": "the operator sets it from the workspace's nodes (--pipeline-parallel-size)",
}
# Keys Kaito's default inference ConfigMap carries that current vLLM no longer accepts: kept working.
OBSOLETE_KEYS = {
    "swap-space": "vLLM no longer has a CPU swap space",
    "max-probe-steps": "Kaito's memory probe; kaitopy sizes the context from measured memory",
    # Offered (commented out) by Kaito's default inference ConfigMap; gone from vLLM's V1 engine.
    "max-seq-len-to-capture": "vLLM no longer has it (CUDA graph sizes are chosen by vLLM)",
    "num-scheduler-steps": "vLLM no longer has multi-step scheduling",
}
# vLLM's OpenAI-server options (0.32), used to check the config file when vLLM itself is not importable
# (the CPU CI image, the controller). tests/integration/inference checks it against vLLM's own parser.
FALLBACK_VLLM_OPTIONS = frozenset(
    """
    additional-config allowed-local-media-path api-key async-scheduling attention-backend block-size
    chat-template chat-template-content-format code-revision compilation-config config-format
    cpu-offload-gb data-parallel-size disable-cascade-attn disable-custom-all-reduce disable-log-stats
    disable-sliding-window disable-uvicorn-access-log distributed-executor-backend download-dir
    enable-auto-tool-choice enable-chunked-prefill enable-expert-parallel enable-force-include-usage
    enable-lora enable-prefix-caching enable-prompt-tokens-details enable-request-id-headers
    enable-sleep-mode enforce-eager generation-config gpu-memory-utilization hf-config-path hf-overrides
    hf-token ignore-patterns kv-cache-dtype kv-cache-memory-bytes limit-mm-per-prompt load-format
    logits-processors logprobs-mode lora-dtype max-cpu-loras max-log-len max-logprobs max-lora-rank
    max-loras max-model-len max-num-batched-tokens max-num-seqs max-parallel-loading-workers
    mm-processor-kwargs model-impl model-loader-extra-config override-generation-config quantization
    reasoning-parser response-role return-tokens-as-token-ids revision root-path scheduling-policy seed
    skip-tokenizer-init speculative-config structured-outputs-config tokenizer tokenizer-mode
    tokenizer-revision tool-call-parser tool-parser-plugin trust-remote-code uvicorn-log-level
    """.split()  # noqa: SIM905 - a word list reads better than 76 quoted strings
)


class PlanError(ValueError):
    """The launch cannot be planned as configured; the message names what to change."""


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path
    rank: int


@dataclass(frozen=True)
class AdapterScan:
    adapters: list[Adapter]
    # One line per adapter directory that was skipped, naming it and why.
    problems: list[str]


@dataclass(frozen=True)
class ModelShape:
    """What sizing needs from config.json and the weights on disk."""

    kv_bytes_per_token: int  # all layers, K and V, in the serving dtype
    max_position_embeddings: int | None
    weight_bytes: int


@dataclass(frozen=True)
class Memory:
    """Measured memory: per GPU on CUDA (the smallest free figure over the pod's GPUs), RAM on CPU."""

    device: str  # "cuda" | "cpu"
    free_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class VllmOptions:
    model_dir: Path
    served_model_name: str
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_model_len: int | None = None
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    # The config file's `vllm:` section, as written.
    extra: Mapping[str, Any] = field(default_factory=dict)
    adapters: list[Adapter] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8000
    # "single", "leader" (pod 0 of a multi-node group) or "worker".
    role: str = "single"
    leader_address: str | None = None
    num_nodes: int = 1
    node_rank: int = 0
    leader_port: int = 29501
    # Requests the front lets generate at once (--max-concurrency); vLLM never needs more sequences.
    max_concurrency: int | None = None
    # Hot-load: LoRA room reserved at start for adapters loaded later (0 slots: hot-load off).
    hot_lora_slots: int = 0
    hot_lora_max_rank: int = 0


@dataclass(frozen=True)
class VllmPlan:
    argv: list[str]  # after `python -m vllm.entrypoints.openai.api_server`
    model_ids: list[str]
    max_model_len: int
    notes: list[str]
    # False on a multi-node worker: it runs its pipeline stage for the leader and serves nothing.
    serves: bool = True
    multi_node: bool = False
    # How the memory flags were worked out, for the log.
    sizing: list[str] = field(default_factory=list)


def serving_dtype(dtype: str, device: str) -> str:
    """The dtype vLLM is told. "auto" on a CPU is float32, as the transformers engine loads it: vLLM's
    own auto picks bfloat16 there, and a model served in bfloat16 on CPU answers differently from the
    same model on the other engine (SmolLM2-135M: 0 of 6 greedy answers alike, 6 of 6 at float32)."""
    if dtype == "auto" and device == "cpu":
        return "float32"
    return dtype


def dtype_bytes(dtype: str, config: Mapping[str, Any]) -> int:
    """Bytes per element in the serving dtype; "auto" follows config.json like vLLM does."""
    if dtype != "auto":
        return _DTYPE_BYTES.get(dtype, 2)
    # vLLM serves float32 checkpoints in bfloat16 when dtype is auto (on GPU); 2 bytes is its usual case.
    declared = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    return 2 if declared == "float32" else _DTYPE_BYTES.get(declared, 2)


def model_shape(config: Mapping[str, Any], dtype: str, weight_bytes: int) -> ModelShape:
    """KV bytes per token from a decoder's config.json (text_config for multimodal wrappers)."""
    text = config.get("text_config")
    cfg: Mapping[str, Any] = text if isinstance(text, Mapping) else config
    try:
        layers = int(cfg["num_hidden_layers"])
        heads = int(cfg["num_attention_heads"])
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanError(f"config.json lacks what sizing the KV cache needs: {exc}") from None
    rank, rope = cfg.get("kv_lora_rank"), cfg.get("qk_rope_head_dim")
    if isinstance(rank, int) and isinstance(rope, int):
        # Multi-head latent attention (DeepSeek-V3, Mistral Large 3): one compressed vector and the
        # rotary key part per layer, whatever the head count.
        per_token = layers * (rank + rope) * dtype_bytes(dtype, cfg)
    else:
        per_token = 2 * layers * kv_heads * head_dim * dtype_bytes(dtype, cfg)
    max_pos = cfg.get("max_position_embeddings")
    return ModelShape(
        kv_bytes_per_token=per_token,
        max_position_embeddings=int(max_pos) if isinstance(max_pos, int) else None,
        weight_bytes=weight_bytes,
    )


def read_model_shape(model_dir: Path, dtype: str) -> ModelShape:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise PlanError(f"{model_dir}/config.json: cannot read it: {exc}") from None
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) or sum(
        p.stat().st_size for p in model_dir.glob("*.bin")
    )
    return model_shape(config, dtype, weights)


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors header, read without torch: an 8-byte little-endian
    length, then a JSON table keyed by tensor name."""
    try:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        return {k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PlanError(f"{path}: not a readable safetensors file: {exc}") from None


def base_weight_shapes(model_dir: Path) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        shapes.update(safetensors_shapes(path))
    return shapes


def weight_module_names(model_dir: Path) -> list[str]:
    """The model's module names (`model.layers.0.self_attn.q_proj`, ...) from its weights."""
    return sorted({key.rpartition(".")[0] for key in base_weight_shapes(model_dir)})


def adapter_shape_problem(adapter_dir: Path, rank: int, base: Mapping[str, list[int]]) -> str | None:
    """Why the adapter's LoRA matrices cannot sit on the base model's layers, or None.

    vLLM loads every --lora-modules adapter at start-up and a mis-shaped one kills the whole server, so
    the shapes are checked here: lora_A is [r, in] and lora_B is [out, r] for a base weight [out, in].
    """
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return None  # .bin adapters: only vLLM can read them
    for key, shape in safetensors_shapes(weights).items():
        for part, expect in ((".lora_A.", "A"), (".lora_B.", "B")):
            if part not in key:
                continue
            module = key.split(part)[0].removeprefix("base_model.model.")
            target = base.get(f"{module}.weight")
            if target is None or len(target) != 2 or len(shape) != 2:
                return f"{key}: no 2-D base weight {module}.weight to adapt"
            want = [rank, target[1]] if expect == "A" else [target[0], rank]
            if shape != want:
                return f"{key} has shape {shape}, the base model and r={rank} need {want}"
    return None


def discover_adapters(adapter_dir: Path | None) -> AdapterScan:
    """Each subdirectory with an adapter_config.json is a LoRA adapter named after the directory."""
    if adapter_dir is None or not adapter_dir.is_dir():
        return AdapterScan([], [])
    adapters: list[Adapter] = []
    problems: list[str] = []
    # One adapter directory itself (what `kaitopy tune pull --dest` fills) is served under its name.
    candidates = sorted(p for p in adapter_dir.iterdir() if p.is_dir())
    single = (adapter_dir / "adapter_config.json").is_file() and not any(
        (p / "adapter_config.json").is_file() for p in candidates
    )
    candidates = [adapter_dir] if single else candidates
    for sub in candidates:
        config_path = sub / "adapter_config.json"
        if not config_path.is_file():
            continue
        sub = sub.resolve() if single else sub
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"adapter {sub.name}: adapter_config.json is not valid JSON ({exc}); skipped")
            continue
        if not isinstance(config, dict):
            problems.append(f"adapter {sub.name}: adapter_config.json is not a JSON object; skipped")
            continue
        rank = config.get("r")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            problems.append(f"adapter {sub.name}: rank r={rank!r} is not a positive integer; skipped")
            continue
        if not any((sub / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
            problems.append(f"adapter {sub.name}: no adapter_model.safetensors or .bin; skipped")
            continue
        adapters.append(Adapter(sub.name, sub, rank))
    if not adapters and not problems and any(adapter_dir.iterdir()):
        problems.append(
            f"--adapter-dir {adapter_dir} holds no adapter: expected one subdirectory per adapter, each "
            "with an adapter_config.json (or the directory itself to be one adapter)"
        )
    return AdapterScan(adapters, problems)


def normalize_key(key: str) -> str:
    """`--Max_Model_Len` and `max_model_len` -> `max-model-len`, as the `vllm:` section is read."""
    return _normalize_key(key)


def _normalize_key(key: str) -> str:
    return key.strip().lstrip("-").replace("_", "-")


def check_extra(extra: Mapping[str, Any], known: Collection[str]) -> tuple[dict[str, Any], list[str]]:
    """The `vllm:` section with normalized keys, obsolete ones dropped (noted); unknown keys are errors."""
    known_set = {_normalize_key(k) for k in known}
    checked: dict[str, Any] = {}
    notes: list[str] = []
    for raw_key, value in extra.items():
        key = _normalize_key(str(raw_key))
        if key in OBSOLETE_KEYS:
            notes.append(f"vllm.{raw_key} ignored: {OBSOLETE_KEYS[key]}")
            continue
        if key in OPERATOR_SET_KEYS:
            notes.append(f"vllm.{raw_key} ignored: {OPERATOR_SET_KEYS[key]}")
            continue
        if key in _RESERVED_KEYS:
            raise PlanError(f"vllm.{raw_key} cannot be set in the config file: {_RESERVED_KEYS[key]}")
        if key not in known_set:
            close = difflib.get_close_matches(key, sorted(known_set), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise PlanError(f"vllm.{raw_key}: vLLM has no option --{key}{hint}")
        checked[key] = value
    return checked, notes


def _option_args(key: str, value: Any) -> list[str]:
    flag = f"--{key}"
    if value is True:
        return [flag]
    if value is False:
        return [f"--no-{key}"]
    if value is None:
        return []
    if isinstance(value, dict):
        return [flag, json.dumps(value)]
    if isinstance(value, list):
        return [flag, *(str(v) for v in value)]
    return [flag, str(value)]


def _round_down(tokens: int) -> int:
    return tokens - tokens % KV_BLOCK_TOKENS if tokens >= KV_BLOCK_TOKENS else tokens


def plan_memory(
    options: VllmOptions, shape: ModelShape, memory: Memory, extra: Mapping[str, Any]
) -> tuple[int, list[str], list[str], list[str]]:
    """(max_model_len, memory flags, notes, how the KV cache was sized) for the measured memory.

    GPU: vLLM may use `--gpu-memory-utilization` x total of each GPU; that is set from what is free now,
    so it never asks for memory another process holds. What remains after weights and activations holds
    the KV cache, and the context is the largest that fits one sequence, capped by the model's own limit.
    CPU: the KV cache size is given in bytes, from the config or half the RAM left after the weights.
    """
    shards = options.tensor_parallel_size * options.pipeline_parallel_size
    per_token = max(1, math.ceil(shape.kv_bytes_per_token / shards))
    notes: list[str] = []
    flags: list[str] = []
    sizing: list[str] = []
    if memory.device == "cuda":
        if "gpu-memory-utilization" in extra:
            utilization = float(extra["gpu-memory-utilization"])
        else:
            utilization = min(
                MAX_GPU_MEMORY_UTILIZATION, (memory.free_bytes - GPU_HEADROOM) / memory.total_bytes
            )
            utilization = math.floor(utilization * 100) / 100
            if utilization <= 0:
                raise PlanError(
                    f"only {memory.free_bytes / GIB:.1f} GiB of {memory.total_bytes / GIB:.1f} GiB "
                    "GPU memory is free"
                )
            flags += ["--gpu-memory-utilization", f"{utilization:.2f}"]
        budget = int(utilization * memory.total_bytes) - shape.weight_bytes // shards - GPU_ACTIVATION_RESERVE
        where = f"{utilization:.2f} x {memory.total_bytes / GIB:.1f} GiB per GPU"
    else:
        if "kv-cache-memory-bytes" in extra:
            budget = int(extra["kv-cache-memory-bytes"])
        else:
            budget, why = cpu_kv_budget(options, shape, memory, extra, per_token)
            flags += ["--kv-cache-memory-bytes", str(budget)]
            sizing.append(why)
        where = f"{memory.free_bytes / GIB:.1f} GiB free RAM"
    fits = _round_down(budget // per_token) if budget > 0 else 0

    if options.max_model_len is not None:
        max_model_len = options.max_model_len
        if max_model_len > fits:
            notes.append(
                f"--max-model-len {max_model_len} exceeds the {fits} tokens the KV cache holds ({where}); "
                "vLLM will refuse to start if it cannot fit one sequence"
            )
        return max_model_len, flags, notes, sizing

    limit = shape.max_position_embeddings
    max_model_len = min(fits, limit) if limit else fits
    if max_model_len < MIN_CONTEXT_TOKENS and (limit is None or limit >= MIN_CONTEXT_TOKENS):
        raise PlanError(
            f"the KV cache holds only {fits} tokens ({shape.kv_bytes_per_token} bytes per token, "
            f"weights {shape.weight_bytes / GIB:.1f} GiB, {where}); use more GPUs or a smaller model"
        )
    if limit and fits < limit:
        notes.append(f"context limited to {max_model_len} tokens by memory (the model allows {limit})")
    return max_model_len, flags, notes, sizing


CPU_PIPELINE_COMPILATION = '{"mode": 2, "backend": "eager"}'
"""Pipeline parallel on CPU must run a compiled model: vLLM 0.32 allocates a later stage's input
buffers only while it warms a compiled model up, so uncompiled (mode 0, or --enforce-eager) every
request fails on the second stage. Dynamo tracing with the eager backend compiles in seconds and
keeps float32 answers exact (tests/e2e/test_local_multinode.py)."""
_EAGER_KEYS = {"compilation-config", "enforce-eager"}


CPU_MIN_NUM_SEQS = 2
"""vLLM's CPU engine with max-num-seqs 1 holds a lone stream's tokens until the generation ends
(measured with the tiny test model: first streamed chunk at 0.64 s of a 0.68 s generation; at 2,
after 0.03 s), so the front's concurrency of 1 does not lower it below this."""


def cpu_max_num_seqs(options: VllmOptions, extra: Mapping[str, Any]) -> int:
    """Sequences vLLM runs at once on a CPU: the config's max-num-seqs, else the front's concurrency
    capped at CPU_MAX_NUM_SEQS (more would only wait in vLLM's queue instead of the front's), and
    at least CPU_MIN_NUM_SEQS."""
    if "max-num-seqs" in extra:
        return int(extra["max-num-seqs"])
    return max(CPU_MIN_NUM_SEQS, min(options.max_concurrency or CPU_MAX_NUM_SEQS, CPU_MAX_NUM_SEQS))


def cpu_kv_budget(
    options: VllmOptions, shape: ModelShape, memory: Memory, extra: Mapping[str, Any], per_token: int
) -> tuple[int, str]:
    """(KV-cache bytes, why) on a CPU: what the served context times the sequences run at once need,
    never more than CPU_KV_FRACTION of the RAM the container has left after the weights and the
    processes (memory.free_bytes is already bounded by the container's limit)."""
    seqs = cpu_max_num_seqs(options, extra)
    context = options.max_model_len or shape.max_position_embeddings or 0
    spare = memory.free_bytes - shape.weight_bytes - CPU_RESERVE
    cap = max(int(spare * CPU_KV_FRACTION), 0)
    if not context:
        return (
            cap,
            f"KV cache {cap / GIB:.2f} GiB: {CPU_KV_FRACTION:.0%} of the spare RAM (no context length known)",
        )
    need = max(int(per_token * context * seqs * CPU_KV_SLACK), CPU_KV_FLOOR)
    if need <= cap:
        return need, (
            f"KV cache {need / GIB:.2f} GiB: {seqs} sequence(s) x {context} tokens "
            f"x {per_token} bytes a token, plus {CPU_KV_SLACK - 1:.0%} "
            f"(at least {CPU_KV_FLOOR // 1024**2} MiB)"
        )
    return cap, (
        f"KV cache {cap / GIB:.2f} GiB, capped by memory ({memory.free_bytes / GIB:.1f} GiB free in the "
        f"container): {seqs} sequence(s) x {context} tokens would need {need / GIB:.2f} GiB"
    )


def multi_node_flags(options: VllmOptions) -> list[str]:
    """vLLM's own multi-node launch: every pod runs vLLM with the group's size and its own rank; rank
    0 serves and hosts the torch.distributed rendezvous, the others run headless (their pipeline stage
    only). No Ray: vLLM's CPU build refuses Ray ("current platform cpu does not support ray"), while
    this launcher works on CPU and GPU alike and needs no Ray processes in the pods."""
    if options.role == "single":
        return []
    if options.role not in ("leader", "worker"):
        raise PlanError(f"unknown multi-node role {options.role!r}")
    if not options.leader_address:
        raise PlanError("multi-node needs --leader-address (the leader pod's DNS name)")
    if options.num_nodes < 2:
        raise PlanError(
            f"multi-node needs --pipeline-parallel-size of 2 or more (one stage per node), "
            f"not {options.num_nodes}"
        )
    if not 0 <= options.node_rank < options.num_nodes:
        raise PlanError(
            f"node rank {options.node_rank} is outside the group of {options.num_nodes} nodes "
            "(--pipeline-parallel-size): the StatefulSet has more pods than pipeline stages"
        )
    if (options.role == "leader") != (options.node_rank == 0):
        raise PlanError(f"the {options.role} cannot have node rank {options.node_rank}")
    flags = [
        "--distributed-executor-backend",
        "mp",
        "--nnodes",
        str(options.num_nodes),
        "--node-rank",
        str(options.node_rank),
        "--master-addr",
        options.leader_address,
        "--master-port",
        str(options.leader_port),
    ]
    return flags + (["--headless"] if options.role == "worker" else [])


def lora_rank_slot(rank: int) -> int:
    """The smallest rank vLLM accepts that holds `rank`."""
    for slot in VLLM_LORA_RANKS:
        if rank <= slot:
            return slot
    raise PlanError(f"LoRA rank {rank} exceeds the largest vLLM supports ({VLLM_LORA_RANKS[-1]})")


def plan_vllm(
    options: VllmOptions, shape: ModelShape, memory: Memory, known_options: Collection[str]
) -> VllmPlan:
    extra, notes = check_extra(options.extra, known_options)
    options = replace(options, dtype=serving_dtype(options.dtype, memory.device))
    configured_len = extra.pop("max-model-len", None)
    if options.max_model_len is None and configured_len is not None:
        options = replace(options, max_model_len=int(configured_len))
    max_model_len, memory_flags, memory_notes, sizing = plan_memory(options, shape, memory, extra)
    notes += memory_notes
    group = multi_node_flags(options)
    argv = [
        "--model",
        str(options.model_dir),
        "--served-model-name",
        options.served_model_name,
        "--host",
        options.host,
        "--port",
        str(options.port),
        "--dtype",
        options.dtype,
        "--tensor-parallel-size",
        str(options.tensor_parallel_size),
        "--pipeline-parallel-size",
        str(options.pipeline_parallel_size),
        "--enable-prefix-caching",
        *memory_flags,
    ]
    argv += ["--max-model-len", str(max_model_len)]
    if memory.device == "cpu" and "max-num-seqs" not in extra:
        argv += ["--max-num-seqs", str(cpu_max_num_seqs(options, extra))]
    argv += group
    if memory.device == "cpu" and options.pipeline_parallel_size > 1 and not extra.keys() & _EAGER_KEYS:
        argv += ["--compilation-config", CPU_PIPELINE_COMPILATION]
    if options.tool_call_parser:
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", options.tool_call_parser]
    if options.reasoning_parser:
        argv += ["--reasoning-parser", options.reasoning_parser]
    if options.adapters or options.hot_lora_slots:
        argv += ["--enable-lora"]
        if options.adapters:
            argv += ["--lora-modules", *(f"{a.name}={a.path}" for a in options.adapters)]
        # Hot-loaded adapters must fit the LoRA buffers sized here, at start.
        ranks = [a.rank for a in options.adapters] + (
            [options.hot_lora_max_rank] if options.hot_lora_slots else []
        )
        argv += ["--max-lora-rank", str(lora_rank_slot(max(ranks)))]
        argv += ["--max-loras", str(max(len(options.adapters), options.hot_lora_slots))]
    for key, value in extra.items():
        argv += _option_args(key, value)
    model_ids = [options.served_model_name, *(a.name for a in options.adapters)]
    return VllmPlan(
        argv=argv,
        model_ids=model_ids,
        max_model_len=max_model_len,
        notes=notes,
        serves=options.role != "worker",
        multi_node=bool(group),
        sizing=sizing,
    )
