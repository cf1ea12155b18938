"""What the sizing reads from a Workspace's inference ConfigMap, parsed one way for the webhook
and the controller alike, so the context admission checked is the one the controller plans for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kaitopy.api.constants import INFERENCE_CONFIG_KEY


class InferenceConfigError(ValueError):
    """A setting the sizing needs is malformed; the message names it and the fix."""


def max_model_len(config: Mapping[str, Any]) -> int | None:
    """The context `vllm.max-model-len` asks for, None when the config leaves it to the engine."""
    vllm = config.get("vllm")
    if not isinstance(vllm, Mapping) or "max-model-len" not in vllm:
        return None
    value = vllm["max-model-len"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InferenceConfigError(
            # The value is not repeated: a ConfigMap's content stays out of error messages.
            f"vllm.max-model-len in {INFERENCE_CONFIG_KEY} must be a positive integer "
            "(the value is not repeated here)"
        )
    return value
