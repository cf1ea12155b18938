"""The trainer's checks before any model loads: device needs of QLoRA and 8-bit optimizers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaitopy.tuning.train import TrainError, TrainRequest, prepare


def _request(tmp_path: Path, method: str = "lora", config: str | None = None) -> TrainRequest:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "d.jsonl").write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    path = None
    if config is not None:
        path = tmp_path / "training_config.yaml"
        path.write_text(config)
    return TrainRequest(method, tmp_path / "model", "org/m", data, tmp_path / "results", path)


def test_lora_on_cpu_is_fine(tmp_path: Path) -> None:
    prep = prepare(_request(tmp_path), cuda_available=False)
    assert prep.output_dir == (tmp_path / "results").resolve() and len(prep.examples) == 1


def test_qlora_on_cpu_needs_a_gpu(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="qlora needs a CUDA GPU"):
        prepare(_request(tmp_path, "qlora"), cuda_available=False)


def test_bitsandbytes_optimizer_on_cpu_needs_a_gpu(tmp_path: Path) -> None:
    config = "training_config:\n  TrainingArguments:\n    optim: paged_adamw_8bit\n"
    with pytest.raises(TrainError, match="paged_adamw_8bit is a bitsandbytes optimizer"):
        prepare(_request(tmp_path, config=config), cuda_available=False)


def test_ignored_settings_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = "training_config:\n  DataCollator:\n    mlm: true\n"
    with caplog.at_level("INFO"):
        prepare(_request(tmp_path, config=config), cuda_available=False)
    assert "DataCollator.mlm is accepted for compatibility and has no effect here" in caplog.text
