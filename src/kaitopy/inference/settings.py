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
# Kaito's default inference ConfigMap carries max_probe_steps (its vLLM memory probe); accepted so a
# config written for Kaito keeps working, and ignored.
_IGNORED_CONFIG_KEYS = frozenset({"max_probe_steps"})
_CONFIG_KEYS = frozenset({"max_model_len", "vllm", "transformers"}) | _IGNORED_CONFIG_KEYS


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
    max_concurrency: int = 1
    max_queue: int = 64
    allow_download: bool = False
    config: InferenceConfig = field(default_factory=InferenceConfig)


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


def role_from_pod_name(pod_name: str | None) -> str:
    """A StatefulSet's pod 0 leads, the others join it."""
    if not pod_name:
        raise SettingsError(
            "--role-from-pod-name needs the POD_NAME environment variable (the pod's own name)"
        )
    ordinal = pod_name.rpartition("-")[2]
    if not ordinal.isdigit():
        raise SettingsError(
            f"--role-from-pod-name: pod name {pod_name!r} does not end in a StatefulSet ordinal"
        )
    return "leader" if int(ordinal) == 0 else "worker"


def default_served_name(model_dir: Path, hf_model_id: str | None) -> str:
    if hf_model_id:
        return hf_model_id
    return model_dir.resolve().name or "model"


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
