"""LoRA / QLoRA fine-tuning: a plain torch loop over the tokenized examples.

Everything that can be checked without the model (configuration, output directory, data, the
GPU a QLoRA run needs) is checked first, so a bad ConfigMap fails in seconds, not after a
multi-gigabyte load. The loop checkpoints every `save_steps` and on SIGTERM, and a restarted pod
resumes from the newest checkpoint; the data order of every epoch is a function of the seed, so
a resumed run sees the same batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from kaitopy.tuning import checkpoint
from kaitopy.tuning.config import (
    ConfigError,
    TrainingConfig,
    ignored_settings,
    load_config,
    resolve_output_dir,
)
from kaitopy.tuning.data import Example, load_examples
from kaitopy.tuning.metrics import TrainingMetrics
from kaitopy.tuning.tokens import FALLBACK_TEMPLATE, IGNORE, Tokenized, tokenize_all

log = logging.getLogger(__name__)

RESULT_FILE = "training_result.json"
# TrainingArguments.optim -> the bitsandbytes optimizer class.
BNB_OPTIMIZERS = {
    "adamw_bnb_8bit": "AdamW8bit",
    "paged_adamw_8bit": "PagedAdamW8bit",
    "paged_adamw_32bit": "PagedAdamW32bit",
}
# What a transformers model needs from a hub repository (not its other formats: .bin, gguf, onnx).
WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py", "*.tiktoken"]


class TrainError(RuntimeError):
    """Training cannot start or could not finish; the message says why."""


@dataclass(frozen=True)
class TrainRequest:
    method: str
    model_dir: Path
    hf_model_id: str
    data_dir: Path
    results_dir: Path
    config_path: Path | None = None
    metrics_port: int | None = None
    stop_after_steps: int | None = None  # end this run early (with a checkpoint), as a preemption would


@dataclass(frozen=True)
class TrainOutcome:
    output_dir: Path
    completed: bool
    step: int
    total_steps: int
    resumed_from: int | None
    final_loss: float | None
    eval_loss: float | None


@dataclass(frozen=True)
class Prepared:
    config: TrainingConfig
    output_dir: Path
    examples: list[Example]
    use_cuda: bool


def prepare(req: TrainRequest, cuda_available: bool | None = None) -> Prepared:
    """Every check that needs no model: config, output directory, data, device."""
    config = load_config(req.method, req.config_path)
    output_dir = resolve_output_dir(config, req.results_dir)
    examples = load_examples(req.data_dir, config.DatasetConfig)
    if cuda_available is None:
        import torch

        cuda_available = bool(torch.cuda.is_available())
    for name in ignored_settings(config):
        log.info("%s is accepted for compatibility and has no effect here", name)
    needs_bnb = config.TrainingArguments.optim in BNB_OPTIMIZERS
    if needs_bnb and not cuda_available:
        raise TrainError(
            f"TrainingArguments.optim {config.TrainingArguments.optim} is a bitsandbytes optimizer, which "
            "needs a CUDA GPU; use adamw_torch on this node"
        )
    if req.method == "qlora" or config.QuantizationConfig.enabled or needs_bnb:
        if not cuda_available:
            raise TrainError(
                "qlora needs a CUDA GPU: bitsandbytes' 4-bit and 8-bit kernels do not run on this "
                "node's CPU; schedule the workspace on a GPU instance type, or use method lora"
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise TrainError("qlora needs the bitsandbytes package (the tuning-gpu extra)") from None
    return Prepared(config, output_dir, examples, cuda_available)


def fingerprint(req: TrainRequest, config: TrainingConfig, examples: list[Example]) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps([req.method, req.hf_model_id, config.model_dump(mode="json")], sort_keys=True).encode()
    )
    for e in examples:
        h.update(repr((e.messages, e.text)).encode())
    return h.hexdigest()[:16]


def _model_source(req: TrainRequest, config: TrainingConfig) -> str:
    """The directory to load the base model from: --model-dir, filled from the hub when empty
    (the Job mounts an empty volume there and passes HF_TOKEN for gated models)."""
    if (req.model_dir / "config.json").is_file():
        return str(req.model_dir)
    from huggingface_hub import snapshot_download

    log.info("%s holds no model; downloading %s into it", req.model_dir, req.hf_model_id)
    try:
        snapshot_download(
            repo_id=req.hf_model_id,
            local_dir=str(req.model_dir),
            revision=config.ModelConfig.revision,
            allow_patterns=WEIGHT_PATTERNS,
        )
    except Exception as exc:  # hub errors come in many types; the message is what matters
        raise TrainError(f"cannot download {req.hf_model_id} into {req.model_dir}: {exc}") from None
    if not (req.model_dir / "config.json").is_file():
        raise TrainError(f"{req.hf_model_id} has no config.json: not a transformers model")
    return str(req.model_dir)


def _dtype(config: TrainingConfig, use_cuda: bool) -> Any:
    import torch

    name = config.ModelConfig.torch_dtype
    if not use_cuda and name in ("bfloat16", "float16"):
        log.info("no GPU: training in float32 instead of %s", name)
        return torch.float32
    if name == "auto":
        return "auto"
    return getattr(torch, name)


def _load_tokenizer(source: str, config: TrainingConfig) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        source, trust_remote_code=config.ModelConfig.trust_remote_code, revision=config.ModelConfig.revision
    )
    template = config.ModelConfig.chat_template
    if template:
        path = Path(template)
        tok.chat_template = path.read_text() if len(template) < 4096 and path.is_file() else template
    elif not getattr(tok, "chat_template", None):
        log.warning("the tokenizer has no chat template; using a plain role-tagged one")
        tok.chat_template = FALLBACK_TEMPLATE
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _load_model(source: str, config: TrainingConfig, use_cuda: bool) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    mc = config.ModelConfig
    kwargs: dict[str, Any] = {
        "dtype": _dtype(config, use_cuda),
        "trust_remote_code": mc.trust_remote_code,
        "revision": mc.revision,
    }
    if mc.attn_implementation:
        kwargs["attn_implementation"] = mc.attn_implementation
    q = config.QuantizationConfig
    if q.enabled:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=q.load_in_4bit,
            load_in_8bit=q.load_in_8bit,
            bnb_4bit_quant_type=q.bnb_4bit_quant_type,
            bnb_4bit_compute_dtype=getattr(torch, q.bnb_4bit_compute_dtype),
            bnb_4bit_use_double_quant=q.bnb_4bit_use_double_quant,
            llm_int8_threshold=q.llm_int8_threshold,
            llm_int8_skip_modules=q.llm_int8_skip_modules,
        )
    if use_cuda and (mc.device_map or q.enabled):
        # bitsandbytes quantizes while placing the weights, so a quantized load always has a map.
        kwargs["device_map"] = mc.device_map or "auto"
    from transformers.utils import logging as hf_logging

    # The pod log gets our progress lines, not tqdm's redraws.
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    model: Any = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if not use_cuda:
        model.to("cpu")
    elif "device_map" not in kwargs:
        model.to("cuda")
    return model


def _peft_model(model: Any, config: TrainingConfig) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    ta = config.TrainingArguments
    if config.QuantizationConfig.enabled:
        model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model, use_gradient_checkpointing=ta.gradient_checkpointing
        )
    elif ta.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lc = config.LoraConfig
    lora = LoraConfig(
        r=lc.r,
        lora_alpha=lc.lora_alpha,
        lora_dropout=lc.lora_dropout,
        target_modules=lc.target_modules,
        bias=lc.bias,
        modules_to_save=lc.modules_to_save,
        layers_to_transform=lc.layers_to_transform,
        fan_in_fan_out=lc.fan_in_fan_out,
        use_rslora=lc.use_rslora,
        init_lora_weights=lc.init_lora_weights,
        task_type=lc.task_type,
    )
    try:
        with warnings.catch_warnings():
            # peft still asks transformers 5 the deprecated way; nothing the user can act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            return get_peft_model(model, lora)
    except ValueError as exc:
        raise TrainError(f"LoraConfig does not fit the model: {exc}") from None


def _optimizer(params: list[Any], config: TrainingConfig, use_cuda: bool) -> Any:
    import torch

    ta = config.TrainingArguments
    kwargs: dict[str, Any] = {
        "lr": ta.learning_rate,
        "betas": (ta.adam_beta1, ta.adam_beta2),
        "eps": ta.adam_epsilon,
        "weight_decay": ta.weight_decay,
    }
    if ta.optim in BNB_OPTIMIZERS:
        import bitsandbytes

        return getattr(bitsandbytes.optim, BNB_OPTIMIZERS[ta.optim])(params, **kwargs)
    if ta.optim == "adamw_torch_fused" and use_cuda:
        kwargs["fused"] = True
    return torch.optim.AdamW(params, **kwargs)


def _split(items: list[Tokenized], config: TrainingConfig) -> tuple[list[Tokenized], list[Tokenized]]:
    ds = config.DatasetConfig
    order = list(range(len(items)))
    if ds.shuffle_dataset:
        random.Random(ds.shuffle_seed).shuffle(order)
    n_train = len(items) if ds.train_test_split >= 1 else max(1, math.floor(len(items) * ds.train_test_split))
    train = [items[i] for i in order[:n_train]]
    held = [items[i] for i in order[n_train:]]
    return train, held


def _collate(batch: list[Tokenized], pad_id: int, multiple: int | None) -> dict[str, Any]:
    import torch

    width = max(len(b.input_ids) for b in batch)
    if multiple:
        width = math.ceil(width / multiple) * multiple
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, b in enumerate(batch):
        n = len(b.input_ids)
        ids[row, :n] = torch.tensor(b.input_ids)
        labels[row, :n] = torch.tensor(b.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class _Schedule:
    """Which examples each optimizer step uses: a pure function of (seed, epoch, step)."""

    def __init__(self, n: int, config: TrainingConfig) -> None:
        ta = config.TrainingArguments
        self.n = n
        self.batch = ta.per_device_train_batch_size
        self.accum = ta.gradient_accumulation_steps
        self.seed = ta.seed
        self.shuffle = config.DatasetConfig.shuffle_dataset
        self.batches_per_epoch = math.ceil(n / self.batch)
        self.steps_per_epoch = max(1, math.ceil(self.batches_per_epoch / self.accum))
        if ta.max_steps > 0:
            self.total = ta.max_steps
        else:
            self.total = max(1, math.ceil(ta.num_train_epochs * self.steps_per_epoch))

    def micro_batches(self, step: int) -> list[list[int]]:
        epoch, within = divmod(step, self.steps_per_epoch)
        order = list(range(self.n))
        if self.shuffle:
            random.Random(self.seed * 100_003 + epoch).shuffle(order)
        first = within * self.accum
        out = []
        for b in range(first, min(first + self.accum, self.batches_per_epoch)):
            out.append(order[b * self.batch : (b + 1) * self.batch])
        return out

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch


class _Stop:
    """SIGTERM (a node drain, a preemption) asks the loop to checkpoint and leave."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._previous: Any = None

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        log.warning("SIGTERM: saving a checkpoint after this step")
        self.requested.set()

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _evaluate(model: Any, items: list[Tokenized], batch: int, pad_id: int, device: Any) -> float:
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(items), batch):
            chunk = items[i : i + batch]
            inputs = {k: v.to(device) for k, v in _collate(chunk, pad_id, None).items()}
            out = model(**inputs)
            tokens = sum(c.trainable for c in chunk)
            total += float(out.loss) * tokens
            count += tokens
    model.train()
    return total / max(count, 1)


def completed_result(output_dir: Path, print_: str) -> dict[str, Any] | None:
    path = output_dir / RESULT_FILE
    if not path.is_file() or not (output_dir / "adapter_model.safetensors").is_file():
        return None
    try:
        result: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return result if result.get("fingerprint") == print_ else None


def train(req: TrainRequest) -> TrainOutcome:
    started = time.monotonic()
    try:
        prep = prepare(req)
    except (ConfigError, ValueError) as exc:
        raise TrainError(str(exc)) from None
    config, out = prep.config, prep.output_dir
    print_ = fingerprint(req, config, prep.examples)
    done = completed_result(out, print_)
    if done is not None:
        log.info("%s already holds the adapter of this run (step %s); nothing to do", out, done.get("step"))
        return TrainOutcome(
            out,
            True,
            int(done["step"]),
            int(done["total_steps"]),
            None,
            done.get("loss"),
            done.get("eval_loss"),
        )
    out.mkdir(parents=True, exist_ok=True)

    import torch

    torch.manual_seed(config.TrainingArguments.seed)
    source = _model_source(req, config)
    tokenizer = _load_tokenizer(source, config)
    tp = config.TokenizerParams
    items = tokenize_all(tokenizer, prep.examples, tp.max_length, tp.truncation)
    train_items, eval_items = _split(items, config)
    log.info(
        "%d examples (%d train, %d held out), %d trainable tokens",
        len(items),
        len(train_items),
        len(eval_items),
        sum(i.trainable for i in train_items),
    )
    model = _peft_model(_load_model(source, config, prep.use_cuda), config)
    # With a device map the model may span GPUs; the inputs go where the embeddings are.
    device = model.get_input_embeddings().weight.device
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("training %d LoRA parameters on %s", trainable, device)

    ta = config.TrainingArguments
    sched = _Schedule(len(train_items), config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(params, config, prep.use_cuda)
    from transformers import get_scheduler

    warmup = ta.warmup_steps or math.ceil(ta.warmup_ratio * sched.total)
    scheduler = get_scheduler(
        ta.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=sched.total
    )

    step, tokens_done, resumed_from = 0, 0, None
    ckpt = checkpoint.latest(out, print_)
    if ckpt is not None:
        checkpoint.restore(model, optimizer, scheduler, ckpt)
        step, tokens_done, resumed_from = ckpt.step, int(ckpt.state.get("tokens", 0)), ckpt.step
        log.info("resuming from %s (step %d of %d)", ckpt.path.name, step, sched.total)

    metrics = TrainingMetrics(out, req.method, req.metrics_port)
    pad_id = int(tokenizer.pad_token_id)
    autocast_dtype = (
        torch.bfloat16 if prep.use_cuda and ta.bf16 else torch.float16 if prep.use_cuda and ta.fp16 else None
    )
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype is torch.float16 else None
    model.train()
    window_loss, window_steps, last_loss = 0.0, 0, math.nan
    run_start, run_start_step, run_start_tokens, steps_this_run = time.monotonic(), step, tokens_done, 0

    def save_checkpoint() -> None:
        checkpoint.save(
            model,
            optimizer,
            scheduler,
            out,
            step,
            {"fingerprint": print_, "tokens": tokens_done, "total_steps": sched.total},
            ta.save_total_limit,
        )
        metrics.checkpoint(step)
        metrics.write()

    with _Stop() as stop:
        while step < sched.total:
            optimizer.zero_grad(set_to_none=True)
            micro = sched.micro_batches(step)
            step_tokens = sum(train_items[i].trainable for mb in micro for i in mb)
            step_loss = 0.0
            for mb in micro:
                batch = [train_items[i] for i in mb]
                inputs = {
                    k: v.to(device)
                    for k, v in _collate(batch, pad_id, config.DataCollator.pad_to_multiple_of).items()
                }
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    loss = model(**inputs).loss
                if not torch.isfinite(loss):
                    raise TrainError(
                        f"the loss became {float(loss)} at step {step + 1}; lower the learning rate"
                    )
                # Weighted by the micro-batch's share of the step's label tokens: the step's loss is
                # the mean over its tokens, however they fall into micro-batches.
                weight = sum(b.trainable for b in batch) / max(step_tokens, 1)
                scaled = loss * weight
                (scaler.scale(scaled) if scaler else scaled).backward()
                step_loss += float(loss.detach()) * weight
            if scaler:
                scaler.unscale_(optimizer)
            if ta.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, ta.max_grad_norm)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            step += 1
            steps_this_run += 1
            tokens_done += step_tokens
            window_loss += step_loss
            window_steps += 1
            last_loss = step_loss
            elapsed = time.monotonic() - run_start
            eta = elapsed / (step - run_start_step) * (sched.total - step)
            lr = float(scheduler.get_last_lr()[0])
            metrics.progress(step, sched.total, sched.epoch_of(step), step_loss, lr, tokens_done, eta)
            if step % ta.logging_steps == 0 or step == sched.total:
                log.info(
                    "step %d/%d epoch %.2f loss %.4f lr %.3g tokens/s %.0f eta %s",
                    step,
                    sched.total,
                    sched.epoch_of(step),
                    window_loss / window_steps,
                    lr,
                    (tokens_done - run_start_tokens) / max(elapsed, 1e-9),
                    _fmt_eta(eta),
                )
                window_loss, window_steps = 0.0, 0
                metrics.write()
            at_end = step == sched.total
            boundary = step % sched.steps_per_epoch == 0
            evaluate_now = (
                eval_items
                and not at_end
                and (
                    (ta.evaluation == "steps" and ta.eval_steps and step % ta.eval_steps == 0)
                    or (ta.evaluation == "epoch" and boundary)
                )
            )
            if evaluate_now:
                loss_now = _evaluate(model, eval_items, ta.per_device_eval_batch_size, pad_id, device)
                metrics.evaluated(loss_now)
                log.info("step %d eval loss %.4f", step, loss_now)
            wanted = (ta.save_strategy == "steps" and step % ta.save_steps == 0) or (
                ta.save_strategy == "epoch" and boundary
            )
            asked = req.stop_after_steps is not None and steps_this_run >= req.stop_after_steps
            if not at_end and (wanted or asked or stop.requested.is_set()):
                save_checkpoint()
            if not at_end and (asked or stop.requested.is_set()):
                why = "SIGTERM" if stop.requested.is_set() else f"--stop-after-steps {req.stop_after_steps}"
                log.warning(
                    "stopping at step %d of %d (%s); a rerun resumes from here", step, sched.total, why
                )
                metrics.write()
                return TrainOutcome(out, False, step, sched.total, resumed_from, last_loss, None)

    eval_loss = None
    if eval_items:
        eval_loss = _evaluate(model, eval_items, ta.per_device_eval_batch_size, pad_id, device)
        metrics.evaluated(eval_loss)
        log.info("eval loss %.4f on %d held-out examples", eval_loss, len(eval_items))
    _save_adapter(model, out, req)
    result = {
        "fingerprint": print_,
        "method": req.method,
        "base_model": req.hf_model_id,
        "step": step,
        "total_steps": sched.total,
        "loss": last_loss,
        "eval_loss": eval_loss,
        "trained_tokens": tokens_done,
        "resumed_from": resumed_from,
        "seconds": round(time.monotonic() - started, 3),
    }
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2))
    checkpoint.remove_all(out)
    metrics.completed()
    metrics.write()
    log.info("adapter written to %s (%d steps, final loss %.4f)", out, step, last_loss)
    return TrainOutcome(out, True, step, sched.total, resumed_from, last_loss, eval_loss)


def _save_adapter(model: Any, out: Path, req: TrainRequest) -> None:
    model.save_pretrained(out, safe_serialization=True)
    config_path = out / "adapter_config.json"
    config = json.loads(config_path.read_text())
    # The base model by its public name: the model dir is this pod's mount, meaningless elsewhere.
    config["base_model_name_or_path"] = req.hf_model_id
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
