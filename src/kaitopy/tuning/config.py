"""The training configuration: Kaito's `training_config.yaml`, validated before any model loads.

The file has one top-level key, `training_config`, holding sections named as in Kaito
(ModelConfig, TokenizerParams, QuantizationConfig, LoraConfig, TrainingArguments, DatasetConfig,
DataCollator). The sections a user writes are laid over the method's built-in defaults, so a
ConfigMap only needs the settings it changes. Unknown sections and keys are errors (with the
closest known names), because a misspelt key silently ignored costs a whole GPU run.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Method = Literal["lora", "qlora"]
METHODS: tuple[Method, ...] = ("lora", "qlora")

DTYPES = ("bfloat16", "float16", "float32", "auto")


class ConfigError(ValueError):
    """The training configuration is unusable; the message lists every problem found."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(_Section):
    torch_dtype: Literal["bfloat16", "float16", "float32", "auto"] = "bfloat16"
    # Kaito's templates set it; the weights always load from --model-dir (filled from the hub
    # when empty), so it changes nothing here.
    local_files_only: bool = False
    device_map: str | None = "auto"
    trust_remote_code: bool = False
    revision: str | None = None
    chat_template: str | None = None
    attn_implementation: str | None = None


class TokenizerSettings(_Section):
    padding: bool | str = True
    truncation: bool = True
    max_length: int = Field(default=2048, ge=8)


class QuantizationSettings(_Section):
    quant_method: Literal["bitsandbytes"] = "bitsandbytes"
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    bnb_4bit_use_double_quant: bool = False
    llm_int8_threshold: float = 6.0
    llm_int8_skip_modules: list[str] | None = None

    @property
    def enabled(self) -> bool:
        return self.load_in_4bit or self.load_in_8bit

    @model_validator(mode="after")
    def _one_width(self) -> QuantizationSettings:
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit are both true; choose one")
        return self


class LoraSettings(_Section):
    r: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=8, gt=0)
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    # None: peft's per-architecture default; "all-linear" is understood by peft as well.
    target_modules: list[str] | str | None = None
    bias: Literal["none", "all", "lora_only"] = "none"
    modules_to_save: list[str] | None = None
    layers_to_transform: list[int] | None = None
    fan_in_fan_out: bool = False
    use_rslora: bool = False
    init_lora_weights: bool = True
    task_type: Literal["CAUSAL_LM"] = "CAUSAL_LM"


class TrainingSettings(_Section):
    output_dir: str = "."
    num_train_epochs: float = Field(default=1.0, gt=0)
    max_steps: int = Field(default=-1, ge=-1)
    per_device_train_batch_size: int = Field(default=1, ge=1)
    per_device_eval_batch_size: int = Field(default=1, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    learning_rate: float = Field(default=2e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    adam_beta1: float = Field(default=0.9, ge=0, lt=1)
    adam_beta2: float = Field(default=0.999, ge=0, lt=1)
    adam_epsilon: float = Field(default=1e-8, gt=0)
    max_grad_norm: float = Field(default=1.0, ge=0)
    lr_scheduler_type: Literal[
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
        "inverse_sqrt",
    ] = "linear"
    # The 8-bit and paged optimizers are bitsandbytes', so they need a GPU like QLoRA does.
    optim: Literal[
        "adamw_torch",
        "adamw_torch_fused",
        "adamw_hf",
        "adamw_bnb_8bit",
        "paged_adamw_8bit",
        "paged_adamw_32bit",
    ] = "adamw_torch"
    eval_strategy: Literal["no", "steps", "epoch"] = "no"
    evaluation_strategy: Literal["no", "steps", "epoch"] | None = None  # the older spelling
    eval_steps: int | None = Field(default=None, ge=1)
    warmup_steps: int = Field(default=0, ge=0)
    warmup_ratio: float = Field(default=0.0, ge=0, le=1)
    logging_steps: int = Field(default=10, ge=1)
    save_strategy: Literal["steps", "epoch", "no"] = "steps"
    save_steps: int = Field(default=100, ge=1)
    save_total_limit: int | None = Field(default=2, ge=1)
    seed: int = 42
    bf16: bool = False
    fp16: bool = False
    gradient_checkpointing: bool = False
    # Accepted for compatibility with Kaito's templates and Hugging Face's TrainingArguments; a
    # single-process loop has nothing to do with them (the trainer logs that they are ignored).
    auto_find_batch_size: bool = False
    ddp_find_unused_parameters: bool | None = None
    report_to: str | list[str] | None = None
    disable_tqdm: bool | None = None
    logging_dir: str | None = None
    logging_first_step: bool = False
    dataloader_num_workers: int = Field(default=0, ge=0)
    remove_unused_columns: bool = True
    group_by_length: bool = False
    overwrite_output_dir: bool = False
    push_to_hub: Literal[False] = False

    @model_validator(mode="after")
    def _one_half_precision(self) -> TrainingSettings:
        if self.bf16 and self.fp16:
            raise ValueError("bf16 and fp16 are both true; choose one")
        strategy = self.evaluation_strategy or self.eval_strategy
        if strategy == "steps" and self.eval_steps is None:
            raise ValueError("eval_strategy steps needs eval_steps")
        return self

    @property
    def evaluation(self) -> str:
        return self.evaluation_strategy or self.eval_strategy


# Settings accepted but without effect here; setting one is logged.
IGNORED: dict[str, tuple[str, ...]] = {
    "TrainingArguments": (
        "auto_find_batch_size",
        "ddp_find_unused_parameters",
        "report_to",
        "disable_tqdm",
        "logging_dir",
        "logging_first_step",
        "dataloader_num_workers",
        "remove_unused_columns",
        "group_by_length",
        "overwrite_output_dir",
    ),
    "ModelConfig": ("local_files_only",),
    "TokenizerParams": ("padding",),
    "DataCollator": ("mlm",),
}


def ignored_settings(config: TrainingConfig) -> list[str]:
    """The section.key names the user set that this trainer accepts but does not act on."""
    out: list[str] = []
    for section, keys in IGNORED.items():
        model = getattr(config, section)
        out += [f"{section}.{k}" for k in keys if k in model.model_fields_set]
    return out


class DatasetSettings(_Section):
    dataset_path: str | None = None
    dataset_extension: Literal["json", "jsonl", "csv", "parquet"] | None = None
    shuffle_dataset: bool = True
    shuffle_seed: int = 42
    context_column: str | None = None
    response_column: str = "text"
    messages_column: str | None = None
    train_test_split: float = Field(default=1.0, gt=0, le=1)


class CollatorSettings(_Section):
    # Kaito's templates say `mlm: true`; a causal LM has no masked-LM objective, so it is accepted
    # and ignored (the loss is always next-token on the trainable tokens).
    mlm: bool = False
    pad_to_multiple_of: int | None = Field(default=None, ge=1)


class TrainingConfig(_Section):
    ModelConfig: ModelSettings = ModelSettings()
    TokenizerParams: TokenizerSettings = TokenizerSettings()
    QuantizationConfig: QuantizationSettings = QuantizationSettings()
    LoraConfig: LoraSettings = LoraSettings()
    TrainingArguments: TrainingSettings = TrainingSettings()
    DatasetConfig: DatasetSettings = DatasetSettings()
    DataCollator: CollatorSettings = CollatorSettings()


SECTIONS: dict[str, type[_Section]] = {
    name: field.annotation  # type: ignore[misc]
    for name, field in TrainingConfig.model_fields.items()
}


def method_defaults(method: Method) -> dict[str, dict[str, Any]]:
    """The sections each method starts from, before the user's file is laid over them."""
    defaults: dict[str, dict[str, Any]] = {
        "ModelConfig": {"torch_dtype": "bfloat16"},
        "LoraConfig": {"r": 8, "lora_alpha": 8, "lora_dropout": 0.0},
    }
    if method == "qlora":
        defaults["QuantizationConfig"] = {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_compute_dtype": "bfloat16",
            "bnb_4bit_use_double_quant": True,
        }
    return defaults


def _close(word: str, options: list[str]) -> str:
    matches = difflib.get_close_matches(word, options, n=3, cutoff=0.6)
    if not matches:
        lowered = {o.lower(): o for o in options}
        if word.lower() in lowered:
            matches = [lowered[word.lower()]]
    return f" (did you mean {', '.join(repr(m) for m in matches)}?)" if matches else ""


def _sections_of(raw: Any, source: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the file must be a YAML mapping with a training_config key")
    if "training_config" in raw:
        extra = sorted(k for k in raw if k != "training_config")
        if extra:
            raise ConfigError(
                f"{source}: unknown top-level key(s) {', '.join(map(repr, extra))}: "
                "everything goes under training_config"
            )
        inner = raw["training_config"]
        if inner is None:
            return {}
        if not isinstance(inner, dict):
            raise ConfigError(f"{source}: training_config must be a mapping of sections")
        return inner
    # The sections at the top level are accepted too; anything else is reported below as unknown.
    return raw


def _describe(err: ValidationError, source: str) -> list[str]:
    problems: list[str] = []
    for item in err.errors():
        loc = [str(p) for p in item["loc"]]
        where = ".".join(loc)
        if item["type"] == "extra_forbidden":
            key = loc[-1]
            if len(loc) == 1:
                hint = _close(key, list(SECTIONS))
                problems.append(f"unknown section {key!r}{hint}; sections are {', '.join(SECTIONS)}")
            else:
                section = SECTIONS.get(loc[0])
                known = list(section.model_fields) if section else []
                problems.append(f"unknown key {where!r}{_close(key, known)}")
        else:
            problems.append(f"{where or 'training_config'}: {item['msg']} (got {item.get('input')!r})")
    return [f"{source}: {p}" for p in problems]


def build_config(method: str, user: Any = None, source: str = "training config") -> TrainingConfig:
    """The method's defaults with the user's sections laid over them, validated."""
    if method not in METHODS:
        raise ConfigError(f"unknown tuning method {method!r}: use one of {', '.join(METHODS)}")
    sections = _sections_of(user, source)
    merged: dict[str, Any] = {k: dict(v) for k, v in method_defaults(method).items()}
    problems: list[str] = []
    for name, value in sections.items():
        if value is None:
            continue
        if name in SECTIONS and not isinstance(value, dict):
            problems.append(f"{source}: section {name!r} must be a mapping, not {type(value).__name__}")
            continue
        if isinstance(value, dict):
            merged[name] = {**merged.get(name, {}), **value}
        else:
            merged[name] = value
    if problems:
        raise ConfigError("\n".join(problems))
    try:
        config = TrainingConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError("\n".join(_describe(err, source))) from None
    _check_method(config, method, source)
    return config


def _check_method(config: TrainingConfig, method: str, source: str) -> None:
    quant = config.QuantizationConfig
    if method == "qlora" and not quant.enabled:
        raise ConfigError(
            f"{source}: method qlora needs a quantized base model: set QuantizationConfig.load_in_4bit "
            "(or load_in_8bit) to true, or use method lora"
        )
    if method == "lora" and quant.enabled:
        raise ConfigError(
            f"{source}: QuantizationConfig loads the model in {'4' if quant.load_in_4bit else '8'}-bit, "
            "which is QLoRA: use method qlora, or set load_in_4bit/load_in_8bit to false"
        )


def load_config(method: str, path: Path | None) -> TrainingConfig:
    """Read and validate the YAML file at `path` (None: the method's defaults)."""
    if path is None:
        return build_config(method)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the training config {path}: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return build_config(method, raw, str(path))


def resolve_output_dir(config: TrainingConfig, results_dir: Path) -> Path:
    """TrainingArguments.output_dir, relative to the results directory; it must stay inside it,
    because only the results directory is pushed (or kept on the output volume)."""
    results = results_dir.resolve()
    given = Path(config.TrainingArguments.output_dir)
    target = (given if given.is_absolute() else results / given).resolve()
    if target != results and results not in target.parents:
        raise ConfigError(
            f"TrainingArguments.output_dir {str(given)!r} is outside the results directory {results}: "
            "use a path inside it (or '.'), since only that directory is kept"
        )
    return target
