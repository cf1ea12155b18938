from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest

from kaitopy.inference.adapters import AdapterInvalid, check, discover
from kaitopy.inference.factory import build_engine
from kaitopy.inference.settings import ServeSettings, SettingsError

MODULES = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.0.mlp.up_proj"]


def test_transformers_engine_is_built_without_loading(tmp_path: Path) -> None:
    engine = build_engine(ServeSettings(engine="transformers", model_dir=tmp_path, served_model_name="m"))
    assert engine.name == "transformers"
    assert not engine.ready()
    assert engine.model_ids() == ["m"]


def test_vllm_without_vllm_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a)
    )
    with pytest.raises(SettingsError, match="vllm is not installed"):
        build_engine(ServeSettings(engine="vllm", model_dir=tmp_path, served_model_name="m"))


def adapter(root: Path, name: str, config: object, weights: bool = False) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if weights:
        (path / "adapter_model.bin").write_bytes(b"")
    return path


def test_discover_takes_directories_with_a_config(tmp_path: Path) -> None:
    adapter(tmp_path, "b", {})
    adapter(tmp_path, "a", {})
    (tmp_path / "c").mkdir()
    (tmp_path / "adapter_config.json").write_text("{}")
    assert [p.name for p in discover(tmp_path)] == ["a", "b"]
    assert discover(tmp_path / "missing") == []
    assert discover(None) == []


def test_discover_serves_an_adapter_dir_that_is_one_adapter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    one = adapter(tmp_path, "pulled", {})
    assert discover(one) == [one]
    assert "serving it as pulled" in caplog.text
    (tmp_path / "pulled" / "adapter_config.json").unlink()
    (tmp_path / "pulled" / "notes.txt").write_text("x")
    assert discover(one) == []
    assert "holds no adapter" in caplog.text


@pytest.mark.parametrize(
    ("config", "weights", "reason"),
    [
        ("{oops", True, "unreadable"),
        ("[1]", True, "JSON object"),
        ({"peft_type": "IA3"}, True, "only LoRA"),
        ({"target_modules": ["gate_proj"]}, True, "match no layer"),
        ({"target_modules": r".*\.k_proj"}, True, "match no layer"),
        ({"target_modules": 5}, True, "string or a list"),
        ({"target_modules": ["q_proj"]}, False, "no weights"),
    ],
)
def test_adapters_that_cannot_work(tmp_path: Path, config: object, weights: bool, reason: str) -> None:
    path = adapter(tmp_path, "x", config, weights)
    with pytest.raises(AdapterInvalid, match=reason):
        check(path, MODULES, [])


@pytest.mark.parametrize(
    "targets", [["q_proj", "v_proj"], ["q_proj", "k_proj"], r".*\.(q|v)_proj", "all-linear", None]
)
def test_adapters_that_fit(tmp_path: Path, targets: object) -> None:
    path = adapter(tmp_path, "x", {"peft_type": "LORA", "target_modules": targets}, weights=True)
    assert check(path, MODULES, ["base"]).name == "x"


def test_a_name_already_served(tmp_path: Path) -> None:
    path = adapter(tmp_path, "base", {"target_modules": ["q_proj"]}, weights=True)
    with pytest.raises(AdapterInvalid, match="already served"):
        check(path, MODULES, ["base"])
