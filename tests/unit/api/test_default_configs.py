"""The default ConfigMaps shipped in manifests/ (Kaito's qlora/lora/inference templates) load
through the trainer's and the model server's own parsers, every key accepted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from kaitopy.api.defaultconfigs import DEFAULT_CONFIGS, INFERENCE_TEMPLATE, TUNING_TEMPLATES
from kaitopy.api.inferenceconfig import max_model_len
from kaitopy.inference.settings import parse_config_text
from kaitopy.inference.vllm_args import FALLBACK_VLLM_OPTIONS, check_extra
from kaitopy.tuning.config import build_config, ignored_settings

# Kaito's examples, read where tests/integration/api/test_kaito_examples.py reads them.
KAITO_EXAMPLES = Path(
    os.environ.get(
        "KAITOPY_KAITO_EXAMPLES", Path(__file__).resolve().parents[4] / "shared" / "kaito-examples"
    )
)
SHIPPED = Path(__file__).resolve().parents[3] / "manifests" / "base" / "default-configs.yaml"


def shipped() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in yaml.safe_load_all(SHIPPED.read_text()) if d}


def test_the_three_kaito_names_are_shipped_in_the_operator_namespace() -> None:
    cms = shipped()
    assert set(cms) == DEFAULT_CONFIGS
    assert {cm["metadata"]["namespace"] for cm in cms.values()} == {"kaito-system"}


@pytest.mark.parametrize("method", sorted(TUNING_TEMPLATES))
def test_tuning_templates_load_through_the_trainer(method: str) -> None:
    text = shipped()[TUNING_TEMPLATES[method]]["data"]["training_config.yaml"]
    config = build_config(method, yaml.safe_load(text), TUNING_TEMPLATES[method])
    assert config.QuantizationConfig.load_in_4bit is (method == "qlora")
    assert config.LoraConfig.r == 8 and config.LoraConfig.lora_alpha == 8
    assert config.TrainingArguments.save_strategy == "no"
    assert config.TrainingArguments.output_dir == "/mnt/results"  # the Job's --output-dir
    # Kaito's keys with no effect here are noted, not refused.
    assert "DataCollator.mlm" in ignored_settings(config)


def test_a_tuning_template_with_the_wrong_method_is_refused() -> None:
    text = shipped()[TUNING_TEMPLATES["qlora"]]["data"]["training_config.yaml"]
    with pytest.raises(ValueError, match="use method qlora"):
        build_config("lora", yaml.safe_load(text))


def test_inference_template_loads_through_the_model_server() -> None:
    text = shipped()[INFERENCE_TEMPLATE]["data"]["inference_config.yaml"]
    config = parse_config_text(text, INFERENCE_TEMPLATE)
    checked, notes = check_extra(config.vllm, FALLBACK_VLLM_OPTIONS)
    assert checked == {"cpu-offload-gb": 0} and notes == []
    assert config.max_model_len is None and max_model_len(yaml.safe_load(text)) is None


def test_options_kaito_suggests_but_vllm_removed_are_noted_not_fatal() -> None:
    # The lines Kaito's template offers, commented out, for users to turn on.
    extra = {"max-seq-len-to-capture": 8192, "num-scheduler-steps": 1, "enable-chunked-prefill": False}
    checked, notes = check_extra(extra, FALLBACK_VLLM_OPTIONS)
    assert checked == {"enable-chunked-prefill": False}
    assert [n.split(" ")[0] for n in notes] == ["vllm.max-seq-len-to-capture", "vllm.num-scheduler-steps"]


def test_kaitos_custom_config_example_starts_with_notes_not_an_error() -> None:
    path = KAITO_EXAMPLES / "inference" / "kaito_workspace_custom_config.yaml"
    if not path.is_file():
        pytest.skip(f"Kaito's examples are not at {KAITO_EXAMPLES}")
    [cm] = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "ConfigMap"]
    config = parse_config_text(cm["data"]["inference_config.yaml"])
    checked, notes = check_extra(config.vllm, FALLBACK_VLLM_OPTIONS)
    assert "tensor-parallel-size" not in checked and checked["max-model-len"] == 131072
    ignored = {n.split(" ")[0] for n in notes}
    assert ignored == {
        "vllm.swap-space",
        "vllm.tensor-parallel-size",
        "vllm.max-seq-len-to-capture",
        "vllm.num-scheduler-steps",
    }
