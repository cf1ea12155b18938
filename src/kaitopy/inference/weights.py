"""Making sure the base model's files are in --model-dir before an engine loads them."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from kaitopy.inference.settings import ServeSettings, SettingsError

log = logging.getLogger(__name__)

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")


def has_weights(model_dir: Path) -> bool:
    if not (model_dir / "config.json").is_file():
        return False
    return any(next(model_dir.glob(pattern), None) is not None for pattern in WEIGHT_PATTERNS)


def _duplicate_formats(files: list[str]) -> list[str]:
    """Mistral's own format (consolidated.safetensors beside params.json) repeats the weights the
    Hugging Face shards hold (634 GiB twice for Mistral Large 3): skipped when the shards are there,
    which are what we load."""
    shards = any(f.startswith("model") and f.endswith(".safetensors") for f in files)
    return ["consolidated*.safetensors"] if shards else []


def ensure_weights(settings: ServeSettings) -> Path:
    """--model-dir when it holds a model; else download --hf-model-id into it when allowed; else a
    SettingsError that names the directory and the way out. Blocking: call it from a thread."""
    model_dir = settings.model_dir
    if has_weights(model_dir):
        return model_dir
    if not (settings.hf_model_id and settings.allow_download):
        hint = (
            f"pass --allow-download (or set KAITOPY_ALLOW_DOWNLOAD=1) to fetch {settings.hf_model_id} there"
            if settings.hf_model_id
            else "put a Hugging Face model there, or pass --hf-model-id and --allow-download"
        )
        raise SettingsError(
            f"--model-dir {model_dir} holds no model weights (config.json and *.safetensors); {hint}"
        )
    from huggingface_hub import list_repo_files, snapshot_download

    log.info("downloading %s into %s", settings.hf_model_id, model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    token = os.environ.get("HF_TOKEN") or None
    snapshot_download(
        repo_id=settings.hf_model_id,
        local_dir=str(model_dir),
        token=token,
        # Only what transformers and vLLM load; repositories often carry several weight formats.
        allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py"],
        ignore_patterns=_duplicate_formats(list_repo_files(settings.hf_model_id, token=token)),
    )
    if not has_weights(model_dir):
        raise SettingsError(
            f"downloaded {settings.hf_model_id} into {model_dir} but found no safetensors weights"
        )
    return model_dir
