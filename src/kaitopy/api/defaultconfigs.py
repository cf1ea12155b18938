"""Kaito's default tuning and inference ConfigMaps: their names, shipped in the operator's namespace
(manifests/base/default-configs.yaml, the chart), and the one rule for copying them.

A Workspace whose tuning.config is empty uses the template for its method; one whose config names a
template that its own namespace lacks gets the operator's copy there. These names are the only
ConfigMaps ever read across namespaces: they are public defaults, so copying one grants nothing."""

from __future__ import annotations

TUNING_TEMPLATES: dict[str, str] = {"qlora": "qlora-params-template", "lora": "lora-params-template"}
INFERENCE_TEMPLATE = "inference-params-template"
DEFAULT_CONFIGS = frozenset({*TUNING_TEMPLATES.values(), INFERENCE_TEMPLATE})
# Marks a workspace namespace's copy, so it is told apart from a user's ConfigMap of the same name.
COPY_LABEL = "kaitopy.io/default-config-copy"


def is_default_config(name: str | None) -> bool:
    return name in DEFAULT_CONFIGS


def tuning_template(method: str) -> str | None:
    return TUNING_TEMPLATES.get(method)
