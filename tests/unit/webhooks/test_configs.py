"""Admission errors about a Workspace's ConfigMap name it and say what is wrong, but never repeat
what it holds: its other keys or values may be credentials."""

from __future__ import annotations

from typing import Any

import pytest

from kaitopy.api import INFERENCE_CONFIG_KEY
from kaitopy.webhooks.configs import _max_model_len, judge_config
from kaitopy.webhooks.validation import FieldError

pytestmark = pytest.mark.unit

SECRET = "hunter2-AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "aws_secret_access_key"


def _errors(data: dict[str, str]) -> list[FieldError]:
    errors: list[FieldError] = []
    cm: dict[str, Any] = {"metadata": {"name": "cfg"}, "data": data}
    judge_config(cm, "team-a", "cfg", "inference.config", INFERENCE_CONFIG_KEY, errors)
    return errors


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({SECRET_KEY: SECRET}, f"ConfigMap 'cfg' has no {INFERENCE_CONFIG_KEY} key"),
        ({INFERENCE_CONFIG_KEY: f"vllm: [{SECRET}", SECRET_KEY: SECRET}, "is not valid YAML (line"),
        ({INFERENCE_CONFIG_KEY: f"token: {SECRET}\n  bad: [indent"}, "is not valid YAML (line 2"),
        ({INFERENCE_CONFIG_KEY: f"- {SECRET}"}, "must be a YAML mapping"),
    ],
    ids=["missing-key", "bad-yaml", "bad-yaml-later-line", "not-a-mapping"],
)
def test_error_names_the_configmap_without_its_content(data: dict[str, str], expected: str) -> None:
    errors = _errors(data)
    assert len(errors) == 1
    message = str(errors[0])
    assert expected in message and "'cfg'" in message
    assert SECRET not in message and "hunter2" not in message and SECRET_KEY not in message


def test_max_model_len_error_does_not_repeat_the_value() -> None:
    errors: list[FieldError] = []
    assert _max_model_len({"vllm": {"max-model-len": SECRET}}, errors) is None
    assert "must be a positive integer" in str(errors[0]) and SECRET not in str(errors[0])


def test_good_config_is_read() -> None:
    errors: list[FieldError] = []
    cm = {"data": {INFERENCE_CONFIG_KEY: "vllm: {max-model-len: 2048}"}}
    assert judge_config(cm, "ns", "cfg", "inference.config", INFERENCE_CONFIG_KEY, errors) == {
        "vllm": {"max-model-len": 2048}
    }
    assert errors == []


def test_what_would_stop_the_model_server_is_refused_at_apply_time() -> None:
    from kaitopy.webhooks.configs import inference_config_problems

    config = {
        "vllm": {"api_key": "sk-123", "cpu-offload-gb": 0, "max-seq-len-to-capture": 8192},
        "transformers": "oops",
        "max_model_lenn": 4,
        "sk-abc def ghi": 1,
    }
    messages = [e.message for e in inference_config_problems(config, "cfg")]
    assert any("unknown top-level key(s) 'max_model_lenn', (a key not shown)" in m for m in messages)
    assert any(
        "transformers in inference_config.yaml in ConfigMap 'cfg' must be a mapping" in m for m in messages
    )
    assert any("vllm.api-key" in m and "Secret" in m for m in messages)
    assert len(messages) == 3
    assert not any("sk-" in m for m in messages)  # values and odd keys are never echoed


def test_kaitos_own_keys_pass_admission() -> None:
    from kaitopy.webhooks.configs import inference_config_problems

    config = {
        "kv_cache_cpu_memory_utilization": 0.5,
        "max_probe_steps": 6,
        "vllm": {"cpu-offload-gb": 0, "swap-space": 4, "num-scheduler-steps": 1},
    }
    assert inference_config_problems(config, "cfg") == []
