"""Where the trainer takes the base model from: the model dir, or the hub when it is empty."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from kaitopy.tuning.config import build_config
from kaitopy.tuning.train import WEIGHT_PATTERNS, TrainError, TrainRequest, _model_source


def _req(model_dir: Path) -> TrainRequest:
    return TrainRequest("lora", model_dir, "org/model", model_dir / "data", model_dir / "out")


def _fake_hub(monkeypatch: pytest.MonkeyPatch, write_config: bool) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def snapshot_download(**kwargs: Any) -> str:
        calls.append(kwargs)
        if write_config:
            Path(kwargs["local_dir"]).mkdir(parents=True, exist_ok=True)
            (Path(kwargs["local_dir"]) / "config.json").write_text("{}")
        return str(kwargs["local_dir"])

    module = types.ModuleType("huggingface_hub")
    module.snapshot_download = snapshot_download  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "huggingface_hub", module)
    return calls


def test_a_filled_model_dir_is_used_as_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_hub(monkeypatch, True)
    (tmp_path / "config.json").write_text("{}")
    assert _model_source(_req(tmp_path), build_config("lora")) == str(tmp_path)
    assert calls == []


def test_an_empty_model_dir_is_filled_from_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_hub(monkeypatch, True)
    config = build_config("lora", {"ModelConfig": {"revision": "abc123"}})
    assert _model_source(_req(tmp_path / "weights"), config) == str(tmp_path / "weights")
    assert calls == [
        {
            "repo_id": "org/model",
            "local_dir": str(tmp_path / "weights"),
            "revision": "abc123",
            "allow_patterns": WEIGHT_PATTERNS,
        }
    ]


def test_a_download_without_a_model_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_hub(monkeypatch, False)
    with pytest.raises(TrainError, match=r"org/model has no config\.json"):
        _model_source(_req(tmp_path / "weights"), build_config("lora"))
