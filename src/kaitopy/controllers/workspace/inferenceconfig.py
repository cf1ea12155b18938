"""The context a Workspace's inference ConfigMap asks for, read by the controller before planning:
the webhook admitted the workspace for that context, so the plan must be sized for it too."""

from __future__ import annotations

from typing import Any

import yaml

from kaitopy.api import INFERENCE_CONFIG_KEY
from kaitopy.api.defaultconfigs import is_default_config
from kaitopy.api.inferenceconfig import InferenceConfigError, max_model_len
from kaitopy.runtime import Client, kinds
from kaitopy.runtime.objects import Obj


async def configured_max_model_len(
    client: Client, ws: Obj, operator_namespace: str | None = None
) -> int | None:
    """`vllm.max-model-len` from the ConfigMap named by inference.config, None when there is no such
    setting. A ConfigMap missing or malformed after admission leaves the context to the engine: the
    model server reports the bad file at start, where the user sees it in the pod. A default
    template not yet copied into the workspace's namespace is read where the webhook read it, in
    `operator_namespace`, so the first plan is sized as admitted."""
    inference = ws.get("inference") or {}
    name = inference.get("config")
    if not name:
        return None
    cm = await client.get_or_none(kinds.CONFIG_MAP, str(name), str(ws["metadata"]["namespace"]))
    if cm is None and operator_namespace and is_default_config(str(name)):
        cm = await client.get_or_none(kinds.CONFIG_MAP, str(name), operator_namespace)
    text = ((cm or {}).get("data") or {}).get(INFERENCE_CONFIG_KEY)
    if not text:
        return None
    try:
        parsed: Any = yaml.safe_load(text)
        return max_model_len(parsed) if isinstance(parsed, dict) else None
    except (yaml.YAMLError, InferenceConfigError):
        return None
