"""What the trainer asks transformers for, per method and device, without loading a model: the
QLoRA path (4-bit nf4, double quantization, device map) is checked on a machine without a GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kaitopy.tuning.config import build_config
from kaitopy.tuning.train import _load_model


class _FakeModel:
    def __init__(self) -> None:
        self.moved_to: list[str] = []

    def to(self, device: str) -> _FakeModel:
        self.moved_to.append(device)
        return self


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    from transformers import AutoModelForCausalLM

    seen: list[dict[str, Any]] = []

    def from_pretrained(source: str, **kwargs: Any) -> _FakeModel:
        seen.append({"source": source, **kwargs})
        return _FakeModel()

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    return seen


def test_qlora_on_a_gpu_asks_for_4bit_nf4_double_quant(calls: list[dict[str, Any]], tmp_path: Path) -> None:
    import torch

    _load_model(str(tmp_path), build_config("qlora"), use_cuda=True)
    (call,) = calls
    q = call["quantization_config"]
    assert q.load_in_4bit and not q.load_in_8bit
    assert (q.bnb_4bit_quant_type, q.bnb_4bit_use_double_quant) == ("nf4", True)
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert call["dtype"] == torch.bfloat16 and call["device_map"] == "auto"


def test_qlora_8bit(calls: list[dict[str, Any]], tmp_path: Path) -> None:
    config = build_config("qlora", {"QuantizationConfig": {"load_in_4bit": False, "load_in_8bit": True}})
    _load_model(str(tmp_path), config, use_cuda=True)
    q = calls[0]["quantization_config"]
    assert q.load_in_8bit and not q.load_in_4bit


def test_lora_on_cpu_is_float32_without_quantization(calls: list[dict[str, Any]], tmp_path: Path) -> None:
    import torch

    model = _load_model(str(tmp_path), build_config("lora"), use_cuda=False)
    (call,) = calls
    assert call["dtype"] == torch.float32
    assert "quantization_config" not in call and "device_map" not in call
    assert model.moved_to == ["cpu"]


def test_lora_on_a_gpu_keeps_bfloat16(calls: list[dict[str, Any]], tmp_path: Path) -> None:
    import torch

    _load_model(str(tmp_path), build_config("lora"), use_cuda=True)
    assert calls[0]["dtype"] == torch.bfloat16 and "quantization_config" not in calls[0]


def test_qlora_always_gets_a_device_map(calls: list[dict[str, Any]], tmp_path: Path) -> None:
    config = build_config("qlora", {"ModelConfig": {"device_map": None}})
    _load_model(str(tmp_path), config, use_cuda=True)
    assert calls[0]["device_map"] == "auto"
