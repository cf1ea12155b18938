"""Checks that need the API server: a ConfigMap named by inference.config or tuning.config must
exist in the workspace's namespace and hold the key the runtime reads. Kaito's default template
names (qlora-params-template ...) may instead exist in the operator's namespace: the controller
copies them (only them) into the workspace's namespace.

Errors name the ConfigMap and say what is wrong, never what it holds: an admission error goes back
to whoever sent the request (and into audit logs), and a ConfigMap may carry credentials, so
neither its other keys nor its values (nor a YAML parser's quote of them) appear in a message."""

from __future__ import annotations

import re
from typing import Any

import yaml

from kaitopy.api import INFERENCE_CONFIG_KEY, TUNING_CONFIG_KEY, Workspace
from kaitopy.api.defaultconfigs import is_default_config
from kaitopy.api.inferenceconfig import InferenceConfigError, max_model_len
from kaitopy.inference.settings import CONFIG_KEYS, KNOWN_CONFIG_KEYS
from kaitopy.inference.vllm_args import RESERVED_KEYS, normalize_key
from kaitopy.runtime import Client, kinds
from kaitopy.webhooks.validation import FieldError


async def check_configs(
    ws: Workspace, namespace: str, client: Client, operator_namespace: str | None = None
) -> tuple[list[FieldError], int | None]:
    """Errors for missing or malformed config ConfigMaps, and the max-model-len the inference
    config sets (vllm.max-model-len), if any. `operator_namespace`: where Kaito's default
    templates are shipped (None: not looked up)."""
    errors: list[FieldError] = []
    max_model_len: int | None = None
    if ws.inference is not None and ws.inference.config:
        found = await _read(
            client,
            namespace,
            ws.inference.config,
            "inference.config",
            INFERENCE_CONFIG_KEY,
            errors,
            operator_namespace,
        )
        if found is not None:
            errors += inference_config_problems(found, ws.inference.config)
            max_model_len = _max_model_len(found, errors)
    if ws.tuning is not None and ws.tuning.config:
        await _read(
            client,
            namespace,
            ws.tuning.config,
            "tuning.config",
            TUNING_CONFIG_KEY,
            errors,
            operator_namespace,
        )
    return errors, max_model_len


async def _read(
    client: Client,
    namespace: str,
    name: str,
    field: str,
    key: str,
    errors: list[FieldError],
    operator_namespace: str | None,
) -> dict[str, Any] | None:
    cm = await client.get_or_none(kinds.CONFIG_MAP, name, namespace)
    if cm is None and operator_namespace and is_default_config(name):
        # The controller copies this public default in; no other name is read across namespaces.
        cm = await client.get_or_none(kinds.CONFIG_MAP, name, operator_namespace)
    return judge_config(cm, namespace, name, field, key, errors)


def judge_config(
    cm: dict[str, Any] | None, namespace: str, name: str, field: str, key: str, errors: list[FieldError]
) -> dict[str, Any] | None:
    """The settings under `key` of ConfigMap `cm` (None, with an error appended, when absent or
    malformed). Messages carry the ConfigMap's name, the expected key and a position, nothing
    read from it."""
    if cm is None:
        errors.append(
            FieldError(
                field,
                f"{field}: ConfigMap {name!r} not found in namespace {namespace!r}: create it with a {key} key, "
                f"or leave {field} empty for the defaults",
            )
        )
        return None
    data = cm.get("data") or {}
    if key not in data:
        errors.append(
            FieldError(
                field,
                f"{field}: ConfigMap {name!r} has no {key} key; put the settings under {key}",
            )
        )
        return None
    try:
        parsed = yaml.safe_load(data[key])
    except yaml.YAMLError as exc:
        # str(exc) quotes the offending lines; only the position is safe to return.
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        errors.append(
            FieldError(
                field, f"{field}: {key} in ConfigMap {name!r} is not valid YAML{where}; fix its syntax"
            )
        )
        return None
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        errors.append(FieldError(field, f"{field}: {key} in ConfigMap {name!r} must be a YAML mapping"))
        return None
    return parsed


# A key is echoed only when it looks like a setting's name, never a value pasted in by mistake.
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _shown(key: object) -> str:
    text = str(key)
    return repr(text) if _NAME.fullmatch(text) else "(a key not shown)"


def inference_config_problems(config: dict[str, Any], name: str) -> list[FieldError]:
    """What the model server would stop on at start, refused at apply time instead: unknown
    top-level keys, sections that are not mappings, and vLLM options the operator sets itself (or
    that must come from a Secret). Unknown vLLM options are left to the server, which knows the
    installed vLLM's own list; options vLLM removed are accepted there with a logged note."""
    field, where = "inference.config", f"{INFERENCE_CONFIG_KEY} in ConfigMap {name!r}"
    errors: list[FieldError] = []
    unknown = sorted(_shown(k) for k in config if k not in CONFIG_KEYS)
    if unknown:
        errors.append(
            FieldError(
                field,
                f"{field}: {where} has unknown top-level key(s) {', '.join(unknown)}; "
                f"the known keys are {', '.join(sorted(KNOWN_CONFIG_KEYS))}",
            )
        )
    for section in ("vllm", "transformers"):
        value = config.get(section)
        if value is not None and not isinstance(value, dict):
            errors.append(FieldError(field, f"{field}: {section} in {where} must be a mapping of options"))
    vllm = config.get("vllm")
    for key in vllm if isinstance(vllm, dict) else ():
        reason = RESERVED_KEYS.get(normalize_key(str(key)))
        if reason is not None:
            errors.append(
                FieldError(
                    field, f"{field}: vllm.{normalize_key(str(key))} in {where} cannot be set there: {reason}"
                )
            )
    return errors


def _max_model_len(config: dict[str, Any], errors: list[FieldError]) -> int | None:
    try:
        return max_model_len(config)
    except InferenceConfigError as exc:
        errors.append(FieldError("inference.config", f"inference.config: {exc}"))
        return None
