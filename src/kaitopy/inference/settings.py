"""What `kaitopy serve` runs with: its flags and the workspace's inference_config.yaml, checked once at
startup so a bad setting stops the pod with one clear line instead of a traceback later."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ENGINES = ("transformers", "vllm")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# vLLM's own default --master-port: where a multi-node leader's torch.distributed store listens.
DEFAULT_LEADER_PORT = 29501
# Kaito's default inference ConfigMap carries max_probe_steps (its vLLM memory probe); accepted so a
# config written for Kaito keeps working, and ignored.
# Its kv_cache_cpu_memory_utilization sizes KV cache offload in Kaito's own vLLM image; no effect here.
_IGNORED_CONFIG_KEYS = frozenset({"max_probe_steps", "kv_cache_cpu_memory_utilization"})
_CONFIG_KEYS = frozenset({"max_model_len", "vllm", "transformers"}) | _IGNORED_CONFIG_KEYS
# For the admission webhook, which refuses at apply time what would stop the pod at start.
CONFIG_KEYS = _CONFIG_KEYS
KNOWN_CONFIG_KEYS = _CONFIG_KEYS - _IGNORED_CONFIG_KEYS


class SettingsError(ValueError):
    """A startup setting is wrong; the message says which and how to fix it."""


@dataclass(frozen=True)
class InferenceConfig:
    """The parsed inference_config.yaml."""

    max_model_len: int | None = None
    vllm: dict[str, Any] = field(default_factory=dict)
    transformers: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ServeSettings:
    engine: str
    model_dir: Path
    served_model_name: str
    hf_model_id: str | None = None
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    adapter_dir: Path | None = None
    host: str = "0.0.0.0"
    port: int = 5000
    max_model_len: int | None = None
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    adapter_strengths: dict[str, float] = field(default_factory=dict)
    # "single" (one pod), "leader" (pod 0 of a multi-node group) or "worker".
    role: str = "single"
    leader_address: str | None = None
    # Multi-node: this pod's place in the group (its StatefulSet ordinal) and the port the leader's
    # torch.distributed rendezvous listens on.
    node_rank: int = 0
    leader_port: int = DEFAULT_LEADER_PORT
    # Every rank's kaitopy server (http://host:port), in rank order: the group watch (group.py).
    group_peers: tuple[str, ...] = ()
    max_concurrency: int = 1
    max_queue: int = 64
    # Generation bounds: max_tokens when a request gives none (less when the context has less room),
    # the most a request may ask for, and the longest a request may take (queue wait included).
    default_max_tokens: int = 1024
    max_tokens_limit: int = 4096
    request_timeout_s: float = 600.0
    # Bearer token the OpenAI and /chat routes require (None: open). From a Secret, never a flag value.
    api_key: str | None = field(default=None, repr=False)
    # The pod's memory limit in bytes when given explicitly (else the cgroup's memory.max is read).
    memory_limit_bytes: int | None = None
    allow_download: bool = False
    config: InferenceConfig = field(default_factory=InferenceConfig)
    # LoRA hot-load (hotload.py): the file the pod's adapter annotation is mounted as (None: off),
    # the image each initial adapter was copied from, where pull secrets are mounted, registries
    # that speak HTTP, and (tests only) whether a loopback registry may be pulled from.
    adapter_desired_file: Path | None = None
    adapter_images: dict[str, str] = field(default_factory=dict)
    adapter_pull_secrets_dir: Path | None = None
    adapter_work_dir: Path | None = None
    plain_http_registries: tuple[str, ...] = ()
    allow_loopback_registry: bool = False
    # vLLM reserves room for LoRAs at start: this many at once in a batch, up to this rank.
    hot_lora_slots: int = 4
    hot_lora_max_rank: int = 64


def parse_strength(text: str) -> tuple[str, float]:
    """`NAME=F` -> (NAME, F); F a finite number >= 0."""
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise SettingsError(f"--adapter-strength {text!r}: expected NAME=FACTOR, e.g. my-adapter=0.5")
    try:
        factor = float(value)
    except ValueError:
        raise SettingsError(f"--adapter-strength {text!r}: {value!r} is not a number") from None
    if not (0.0 <= factor < float("inf")):
        raise SettingsError(f"--adapter-strength {text!r}: the factor must be a finite number >= 0")
    return name, factor


def parse_images(items: list[str]) -> dict[str, str]:
    images: dict[str, str] = {}
    for text in items:
        name, sep, image = text.partition("=")
        if not sep or not name or not image:
            raise SettingsError(f"--adapter-image {text!r}: expected NAME=IMAGE")
        images[name] = image
    return images


def parse_strengths(items: list[str]) -> dict[str, float]:
    strengths: dict[str, float] = {}
    for item in items:
        name, factor = parse_strength(item)
        if name in strengths:
            raise SettingsError(f"--adapter-strength given twice for adapter {name!r}")
        strengths[name] = factor
    return strengths


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SettingsError(f"{where} must be a positive integer, not {value!r}")
    return value


def parse_config_text(text: str, source: str = "inference_config.yaml") -> InferenceConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(f"{source} is not valid YAML: {exc}") from None
    if raw is None:
        return InferenceConfig()
    if not isinstance(raw, dict):
        raise SettingsError(f"{source} must be a YAML mapping, not {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in _CONFIG_KEYS)
    if unknown:
        known = ", ".join(sorted(_CONFIG_KEYS - _IGNORED_CONFIG_KEYS))
        raise SettingsError(f"{source}: unknown key(s) {', '.join(unknown)}; the known keys are {known}")
    sections: dict[str, dict[str, Any]] = {}
    for key in ("vllm", "transformers"):
        section = raw.get(key)
        if section is None:
            sections[key] = {}
        elif isinstance(section, dict):
            sections[key] = {str(k): v for k, v in section.items()}
        else:
            raise SettingsError(f"{source}: {key} must be a mapping of options, not {section!r}")
    max_model_len = raw.get("max_model_len")
    if max_model_len is not None:
        max_model_len = _positive_int(max_model_len, f"{source}: max_model_len")
    elif "max-model-len" in sections["vllm"]:
        # Kaito's configs set the context length here; it bounds every engine's requests alike.
        max_model_len = _positive_int(sections["vllm"]["max-model-len"], f"{source}: vllm.max-model-len")
    return InferenceConfig(
        max_model_len=max_model_len, vllm=sections["vllm"], transformers=sections["transformers"]
    )


def load_config(path: Path) -> InferenceConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(f"--config {path}: cannot read it: {exc.strerror or exc}") from None
    return parse_config_text(text, str(path))


def node_rank_from_pod_name(pod_name: str | None) -> int:
    """A StatefulSet pod's ordinal is its node rank in a multi-node group: pod 0 leads."""
    if not pod_name:
        raise SettingsError(
            "--role-from-pod-name needs the POD_NAME environment variable (the pod's own name)"
        )
    ordinal = pod_name.rpartition("-")[2]
    if not ordinal.isdigit():
        raise SettingsError(
            f"--role-from-pod-name: pod name {pod_name!r} does not end in a StatefulSet ordinal"
        )
    return int(ordinal)


def role_of(node_rank: int) -> str:
    return "leader" if node_rank == 0 else "worker"


def watched_peers(group: tuple[str, ...], node_rank: int) -> list[str]:
    """The servers a rank watches: the leader every worker, a worker its leader."""
    if not group:
        return []
    return list(group[1:]) if node_rank == 0 else [group[0]]


def default_served_name(model_dir: Path, hf_model_id: str | None) -> str:
    if hf_model_id:
        return hf_model_id
    return model_dir.resolve().name or "model"


def read_api_key(path: Path | None, env_value: str | None) -> str | None:
    """The bearer token: the file's content (a mounted Secret) or the environment's value (a Secret
    in `env`), stripped; None when neither is given. A given but empty token is an error, not "open"."""
    if path is not None:
        try:
            key = path.read_text().strip()
        except OSError as exc:
            raise SettingsError(f"--api-key-file {path}: cannot read it: {exc.strerror or exc}") from None
        if not key:
            raise SettingsError(f"--api-key-file {path} is empty; put the token in it or drop the flag")
        return key
    if env_value is not None:
        key = env_value.strip()
        if not key:
            raise SettingsError("KAITOPY_API_KEY is set but empty; set the token or unset it")
        return key
    return None


_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3}


def parse_memory(text: str, flag: str = "--memory-limit") -> int:
    """A byte count written as Kubernetes writes quantities: 4Gi, 512Mi, 2G, 1073741824."""
    number = text.strip().rstrip("iIkKmMgG")
    unit = text.strip()[len(number) :].lower()
    if not number.isdigit() or unit not in _UNITS or int(number) == 0:
        raise SettingsError(f"{flag} {text!r}: expected a size such as 4Gi, 512Mi or a byte count")
    return int(number) * _UNITS[unit]


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
