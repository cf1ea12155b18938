"""What the model server fetches from the hub into an empty --model-dir."""

from __future__ import annotations

import fnmatch
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from kaitopy.inference.settings import ServeSettings
from kaitopy.inference.weights import ensure_weights

pytestmark = pytest.mark.unit

# A Mistral repository (Ministral 3, Mistral Large 3) as the hub lists it: the Hugging Face shards
# and Mistral's own format of the same weights.
MISTRAL_REPO = (
    "config.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "consolidated.safetensors",
    "params.json",
    "tokenizer.json",
)


def _fake_hub(monkeypatch: pytest.MonkeyPatch, repo: tuple[str, ...]) -> None:
    def list_repo_files(repo_id: str, token: str | None = None) -> list[str]:
        return list(repo)

    def snapshot_download(**kwargs: Any) -> str:
        # The hub's filtering: a file comes when it matches an allow pattern and no ignore pattern.
        local = Path(kwargs["local_dir"])
        for name in repo:
            allowed = any(fnmatch.fnmatch(name, p) for p in kwargs.get("allow_patterns") or ["*"])
            ignored = any(fnmatch.fnmatch(name, p) for p in kwargs.get("ignore_patterns") or [])
            if allowed and not ignored:
                (local / name).write_text("x")
        return str(local)

    module = types.ModuleType("huggingface_hub")
    module.snapshot_download = snapshot_download  # type: ignore[attr-defined]
    module.list_repo_files = list_repo_files  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "huggingface_hub", module)


def test_mistral_format_duplicate_of_the_weights_is_not_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_hub(monkeypatch, MISTRAL_REPO)
    got = sorted(p.name for p in ensure_weights(_settings(tmp_path)).iterdir())
    assert "consolidated.safetensors" not in got  # 634 GiB twice for Mistral Large 3 otherwise
    assert {"config.json", "model-00001-of-00002.safetensors", "params.json"} <= set(got)


def test_mistral_format_alone_is_downloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A repository with no Hugging Face shards keeps its only weights.
    _fake_hub(monkeypatch, ("config.json", "consolidated.safetensors", "params.json"))
    got = sorted(p.name for p in ensure_weights(_settings(tmp_path)).iterdir())
    assert "consolidated.safetensors" in got


def _settings(tmp_path: Path) -> ServeSettings:
    return ServeSettings(
        engine="vllm",
        model_dir=tmp_path / "weights",
        served_model_name="ministral-3-3b-instruct",
        hf_model_id="mistralai/Ministral-3-3B-Instruct-2512",
        allow_download=True,
    )
