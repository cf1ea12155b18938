"""The training configuration: Kaito's shape, method defaults, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kaitopy.tuning.config import ConfigError, build_config, load_config, resolve_output_dir

# Kaito's LoRA ConfigMap template, as its chart ships it.
KAITO_LORA = """
training_config:
  ModelConfig:
    torch_dtype: "bfloat16"
    local_files_only: true
    device_map: "auto"
  TokenizerParams:
    padding: true
    truncation: true
  QuantizationConfig:
    load_in_4bit: false
  LoraConfig:
    r: 16
    lora_alpha: 32
    target_modules: "query_key_value"
    lora_dropout: 0.05
    bias: "none"
  TrainingArguments:
    output_dir: "."
    num_train_epochs: 4
    auto_find_batch_size: true
    ddp_find_unused_parameters: false
    save_strategy: "epoch"
  DatasetConfig:
    shuffle_dataset: true
    train_test_split: 1
  DataCollator:
    mlm: true
"""


def test_lora_defaults() -> None:
    c = build_config("lora")
    assert (c.LoraConfig.r, c.LoraConfig.lora_alpha, c.LoraConfig.lora_dropout) == (8, 8, 0.0)
    assert c.ModelConfig.torch_dtype == "bfloat16"
    assert not c.QuantizationConfig.enabled


def test_qlora_defaults_add_4bit_nf4_double_quant() -> None:
    q = build_config("qlora").QuantizationConfig
    assert q.load_in_4bit and not q.load_in_8bit
    assert q.bnb_4bit_quant_type == "nf4"
    assert q.bnb_4bit_use_double_quant
    assert build_config("qlora").LoraConfig.r == 8


def test_kaito_template_is_accepted() -> None:
    c = build_config("lora", yaml.safe_load(KAITO_LORA))
    assert c.LoraConfig.r == 16 and c.LoraConfig.lora_alpha == 32
    assert c.LoraConfig.target_modules == "query_key_value"
    assert c.TrainingArguments.save_strategy == "epoch"
    assert c.TrainingArguments.num_train_epochs == 4


def test_user_sections_overlay_defaults() -> None:
    c = build_config("qlora", {"training_config": {"QuantizationConfig": {"bnb_4bit_quant_type": "fp4"}}})
    assert c.QuantizationConfig.load_in_4bit  # kept from the method default
    assert c.QuantizationConfig.bnb_4bit_quant_type == "fp4"


def test_sections_at_top_level_are_accepted() -> None:
    assert build_config("lora", {"LoraConfig": {"r": 4}}).LoraConfig.r == 4


def test_unknown_key_names_it_and_the_close_match() -> None:
    with pytest.raises(ConfigError) as err:
        build_config("lora", {"training_config": {"TrainingArguments": {"learning_rat": 1e-4}}})
    msg = str(err.value)
    assert "TrainingArguments.learning_rat" in msg
    assert "did you mean 'learning_rate'" in msg


def test_unknown_section_names_it_and_the_close_match() -> None:
    with pytest.raises(ConfigError) as err:
        build_config("lora", {"training_config": {"LoraConfg": {"r": 4}}})
    assert "unknown section 'LoraConfg'" in str(err.value)
    assert "'LoraConfig'" in str(err.value)


def test_every_problem_is_reported() -> None:
    with pytest.raises(ConfigError) as err:
        build_config(
            "lora", {"LoraConfig": {"r": 0, "alpha": 3}, "TrainingArguments": {"bf16": True, "fp16": True}}
        )
    msg = str(err.value)
    assert "LoraConfig.r" in msg
    assert "LoraConfig.alpha" in msg and "lora_alpha" in msg
    assert "bf16 and fp16" in msg


def test_wrong_type_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"LoraConfig\.r: .*got 'eight'"):
        build_config("lora", {"LoraConfig": {"r": "eight"}})


def test_section_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="section 'LoraConfig' must be a mapping"):
        build_config("lora", {"LoraConfig": [1, 2]})


def test_stray_top_level_key_beside_training_config() -> None:
    with pytest.raises(ConfigError, match="unknown top-level key"):
        build_config("lora", {"training_config": {}, "extra": 1})


def test_qlora_without_quantization_is_an_error() -> None:
    with pytest.raises(ConfigError, match="qlora needs a quantized base model"):
        build_config("qlora", {"QuantizationConfig": {"load_in_4bit": False}})


def test_qlora_with_8bit_is_accepted() -> None:
    q = build_config("qlora", {"QuantizationConfig": {"load_in_4bit": False, "load_in_8bit": True}})
    assert q.QuantizationConfig.load_in_8bit


def test_lora_with_quantization_points_to_qlora() -> None:
    with pytest.raises(ConfigError, match="use method qlora"):
        build_config("lora", {"QuantizationConfig": {"load_in_4bit": True}})


def test_both_widths_is_an_error() -> None:
    with pytest.raises(ConfigError, match="choose one"):
        build_config("qlora", {"QuantizationConfig": {"load_in_8bit": True}})


def test_unknown_method() -> None:
    with pytest.raises(ConfigError, match="unknown tuning method 'dora'"):
        build_config("dora")


@pytest.mark.parametrize("given", ["..", "../elsewhere", "/tmp/outside-results", "sub/../../x"])
def test_output_dir_outside_results_is_an_error(tmp_path: Path, given: str) -> None:
    results = tmp_path / "results"
    results.mkdir()
    config = build_config("lora", {"TrainingArguments": {"output_dir": given}})
    with pytest.raises(ConfigError, match="outside the results directory"):
        resolve_output_dir(config, results)


@pytest.mark.parametrize(("given", "expected"), [(".", ""), ("adapter", "adapter"), ("a/b", "a/b")])
def test_output_dir_inside_results(tmp_path: Path, given: str, expected: str) -> None:
    config = build_config("lora", {"TrainingArguments": {"output_dir": given}})
    assert resolve_output_dir(config, tmp_path) == (tmp_path / expected).resolve()


def test_absolute_output_dir_inside_results(tmp_path: Path) -> None:
    config = build_config("lora", {"TrainingArguments": {"output_dir": str(tmp_path / "x")}})
    assert resolve_output_dir(config, tmp_path) == (tmp_path / "x").resolve()


def test_load_config_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "training_config.yaml"
    path.write_text("training_config:\n  LoraConfig:\n    rr: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config("lora", path)
    assert str(path) in str(err.value)
    assert "LoraConfig.rr" in str(err.value) and "'r'" in str(err.value)
    path.write_text("training_config: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("lora", path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("lora", tmp_path / "missing.yaml")


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    path = tmp_path / "training_config.yaml"
    path.write_text("")
    assert load_config("lora", path) == build_config("lora")


def test_eval_steps_strategy_needs_eval_steps() -> None:
    with pytest.raises(ConfigError, match="eval_strategy steps needs eval_steps"):
        build_config("lora", {"TrainingArguments": {"evaluation_strategy": "steps"}})
    c = build_config("lora", {"TrainingArguments": {"eval_strategy": "steps", "eval_steps": 5}})
    assert c.TrainingArguments.evaluation == "steps"


def test_unsupported_optimizer_lists_the_supported_ones() -> None:
    with pytest.raises(ConfigError) as err:
        build_config("lora", {"TrainingArguments": {"optim": "adafactor"}})
    assert "TrainingArguments.optim" in str(err.value) and "paged_adamw_8bit" in str(err.value)


def test_push_to_hub_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"TrainingArguments\.push_to_hub"):
        build_config("lora", {"TrainingArguments": {"push_to_hub": True}})


def test_ignored_settings_are_listed() -> None:
    from kaitopy.tuning.config import ignored_settings

    c = build_config("lora", yaml.safe_load(KAITO_LORA))
    assert ignored_settings(c) == [
        "TrainingArguments.auto_find_batch_size",
        "TrainingArguments.ddp_find_unused_parameters",
        "ModelConfig.local_files_only",
        "TokenizerParams.padding",
        "DataCollator.mlm",
    ]
    assert ignored_settings(build_config("lora")) == []
