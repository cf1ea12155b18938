"""The admission rules for Workspaces, as pure functions of the objects and the catalog.

Each rule yields a `FieldError` naming the field and saying what would fit. The schema's CEL rules
refuse some of the same cases first (with the same messages); they are repeated here so that the
functions are a complete statement of what a valid Workspace is, usable without an API server.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from pydantic import ValidationError

from kaitopy.api import MAX_ADAPTERS, Workspace, messages
from kaitopy.api.constants import RUNTIME_ANNOTATION, RUNTIMES
from kaitopy.api.workspace import STRENGTH_PATTERN, DataSource, PresetSpec
from kaitopy.presets import (
    Catalog,
    CatalogError,
    DoesNotFit,
    EstimateError,
    GpuSku,
    ModelPreset,
    check_tuning_fits,
    estimate,
)
from kaitopy.ssrf.addresses import IPNetwork
from kaitopy.webhooks.urls import url_problem


@dataclass(frozen=True)
class FieldError:
    """A refusal: the field (dotted path) and a message saying what is wrong and what would fit."""

    field: str
    message: str

    def __str__(self) -> str:
        return self.message if self.message.startswith(self.field) else f"{self.field}: {self.message}"


def pydantic_errors(exc: ValidationError) -> list[FieldError]:
    """FieldErrors for a body the models cannot read (wrong types, bad enum values)."""
    out = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        # The value as written, so the author sees what was read (a missing field has none).
        got = f" (got {err['input']!r})" if err["type"] != "missing" and "input" in err else ""
        out.append(FieldError(field, f"{field}: {err['msg']}{got}"))
    return out


def validate_create(
    ws: Workspace,
    catalog: Catalog,
    *,
    max_model_len: int | None = None,
    url_allowed: tuple[IPNetwork, ...] = (),
) -> list[FieldError]:
    """Everything wrong with a new Workspace. `max_model_len` is the context the inference config
    asks for (the model's own limit when None); `url_allowed`, the private networks the admin lets
    user-given URLs reach (--url-allow-network)."""
    return list(_create(ws, catalog, max_model_len, url_allowed))


def validate_update(
    old: Workspace,
    new: Workspace,
    catalog: Catalog,
    *,
    max_model_len: int | None = None,
    url_allowed: tuple[IPNetwork, ...] = (),
) -> list[FieldError]:
    """What an update may not do (change immutable fields), plus everything wrong with the new
    object. Adapters may change. An object being deleted, or an update that leaves resource,
    inference and tuning as they were, is not checked."""
    if new.metadata.get("deletionTimestamp") or not spec_changed(old, new):
        return []
    return [*_immutable(old, new), *_create(new, catalog, max_model_len, url_allowed)]


def _runtime_of(ws: Workspace) -> object:
    return (ws.metadata.get("annotations") or {}).get(RUNTIME_ANNOTATION)


def runtime_problem(value: object, model: ModelPreset | None) -> str | None:
    """Why the kaito.sh/runtime annotation's value cannot run this model; None when it can (or is
    unset). Kaito falls back to vLLM on a value it does not know; kaitopy refuses it, so a typo
    does not silently pick another engine."""
    if value is None:
        return None
    field = f"metadata.annotations[{RUNTIME_ANNOTATION}]"
    if value not in RUNTIMES:
        return f"{field}: {value!r} is not a runtime; use one of {', '.join(RUNTIMES)} (or leave it unset)"
    if model is not None and model.on_cpu and value != model.cpu_runtime:
        return (
            f"{field}: {value!r} cannot run {model.name}, which runs on CPU with the "
            f"{model.cpu_runtime} engine only"
        )
    return None


def _runtime(ws: Workspace, catalog: Catalog) -> Iterator[FieldError]:
    model: ModelPreset | None = None
    spec = ws.inference
    if spec is not None and spec.preset is not None:
        found = _model(catalog, "inference.preset.name", spec.preset.name)
        model = found if isinstance(found, ModelPreset) else None
    problem = runtime_problem(_runtime_of(ws), model)
    if problem is not None:
        yield FieldError(f"metadata.annotations[{RUNTIME_ANNOTATION}]", problem)


def spec_changed(old: Workspace, new: Workspace) -> bool:
    """Whether an update touches resource, inference or tuning. Updates of metadata alone
    (finalizers, labels, annotations) are always allowed: the controller must never be blocked
    by a rule the object broke only after the catalog or a ConfigMap changed."""
    return (old.resource, old.inference, old.tuning) != (new.resource, new.inference, new.tuning)


def _immutable(old: Workspace, new: Workspace) -> Iterator[FieldError]:
    if (old.inference is None) != (new.inference is None) or (old.tuning is None) != (new.tuning is None):
        yield FieldError("inference", messages.NO_TOGGLE)
    if old.resource.instance_type != new.resource.instance_type:
        yield FieldError("resource.instanceType", messages.IMMUTABLE_INSTANCE_TYPE)
    if old.resource.label_selector != new.resource.label_selector:
        yield FieldError("resource.labelSelector", messages.IMMUTABLE_LABEL_SELECTOR)
    if old.resource.count != new.resource.count:
        yield FieldError("resource.count", messages.IMMUTABLE_COUNT)
    if old.inference and new.inference and _preset(old.inference.preset) != _preset(new.inference.preset):
        yield FieldError("inference.preset.name", messages.IMMUTABLE_INFERENCE_PRESET)
    if old.tuning and new.tuning:
        if _preset(old.tuning.preset) != _preset(new.tuning.preset):
            yield FieldError("tuning.preset.name", messages.IMMUTABLE_TUNING_PRESET)
        if old.tuning.method != new.tuning.method:
            yield FieldError("tuning.method", messages.IMMUTABLE_TUNING_METHOD)


def _preset(preset: PresetSpec | None) -> str | None:
    return preset.name if preset is not None else None


NAME_MAX = 63
"""A Service (and a label value) carries the workspace's name: a DNS-1035 label."""
MULTI_NODE_NAME_MAX = 52
"""A StatefulSet labels its pods controller-revision-hash=<name>-<10-character hash>, a label
value of at most 63 characters; its headless Service <name>-headless needs even less."""
_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def name_problem(name: str, *, multi_node: bool) -> str | None:
    """Why objects named after this workspace cannot be created, with a name that can; None when
    they can. Checked at admission: the API server accepts dots and leading digits in a custom
    resource's name, and the Service or StatefulSet made from it would then fail on every retry."""
    limit = MULTI_NODE_NAME_MAX if multi_node else NAME_MAX
    if len(name) <= limit and _DNS_1035.fullmatch(name):
        return None
    fixed = re.sub(r"[^a-z0-9-]+", "-", name.lower())
    fixed = fixed if fixed[:1].isalpha() else f"ws-{fixed}"
    fixed = fixed[:limit].strip("-") or "ws"
    shape = (
        f"at most {limit} characters for a multi-node model (its StatefulSet pods carry <name>-<hash> labels)"
        if multi_node
        else f"at most {limit} characters (it names the model's Service)"
    )
    return (
        f"metadata.name {name!r} cannot name the workspace's objects: use lowercase letters, digits and '-', "
        f"starting with a letter and ending with a letter or digit, {shape}; e.g. {fixed!r}"
    )


def _name(ws: Workspace, multi_node: bool) -> Iterator[FieldError]:
    problem = name_problem(ws.name, multi_node=multi_node) if ws.name else None
    if problem is not None:
        yield FieldError("metadata.name", problem)


def _create(
    ws: Workspace, catalog: Catalog, max_model_len: int | None, url_allowed: tuple[IPNetwork, ...]
) -> Iterator[FieldError]:
    if (ws.inference is None) == (ws.tuning is None):
        yield FieldError("inference", messages.EXACTLY_ONE_OF)
    if ws.resource.partition is not None:
        yield FieldError("resource.partition", messages.PARTITION_UNSUPPORTED)
    yield from _runtime(ws, catalog)
    sku: GpuSku | None = None
    try:
        sku = catalog.sku(ws.resource.instance_type)
    except CatalogError as exc:
        yield FieldError("resource.instanceType", f"resource.instanceType: {exc}")
    multi_node = False
    if ws.inference is not None:
        for err in _inference(ws, catalog, sku, max_model_len):
            if isinstance(err, FieldError):
                yield err
            else:
                multi_node = err
    if ws.tuning is not None:
        yield from _tuning(ws, catalog, sku, url_allowed)
    yield from _name(ws, multi_node)


def _model(catalog: Catalog, field: str, name: str) -> ModelPreset | FieldError:
    try:
        return catalog.model(name)
    except CatalogError as exc:
        return FieldError(field, f"{field}: {exc}")


def _inference(
    ws: Workspace, catalog: Catalog, sku: GpuSku | None, max_model_len: int | None
) -> Iterator[FieldError | bool]:
    """The errors, and (as a bool) whether the model runs on several nodes."""
    inf = ws.inference
    assert inf is not None
    if inf.preset is not None and inf.template is not None:
        yield FieldError("inference.template", messages.PRESET_AND_TEMPLATE)
    if inf.preset is None and inf.template is None:
        yield FieldError("inference", messages.PRESET_OR_TEMPLATE)
    model: ModelPreset | None = None
    if inf.preset is not None:
        found = _model(catalog, "inference.preset.name", inf.preset.name)
        if isinstance(found, FieldError):
            yield found
        else:
            model = found
            yield from _access(inf.preset, model, "inference.preset")
            if sku is not None:
                yield from _fits(model, sku, max_model_len)
    adapters = inf.adapters or []
    if adapters and inf.preset is None:
        yield FieldError(
            "inference.adapters",
            "inference.adapters need inference.preset: adapters apply to a catalog model",
        )
    if adapters and model is not None and not model.supports_lora:
        yield FieldError(
            "inference.adapters",
            f"inference.adapters: {model.name} does not support LoRA adapters; remove them or pick a model that does",
        )
    if len(adapters) > MAX_ADAPTERS:
        yield FieldError(
            "inference.adapters", f"inference.adapters: at most {MAX_ADAPTERS} adapters, got {len(adapters)}"
        )
    seen: set[str] = set()
    for i, adapter in enumerate(adapters):
        field = f"inference.adapters[{i}]"
        source = adapter.source
        if source is None or not source.name:
            yield FieldError(
                f"{field}.source.name", f"{field}.source.name is required: adapters are known by name"
            )
        elif source.name in seen:
            yield FieldError(
                f"{field}.source.name", f"{messages.ADAPTER_NAMES_UNIQUE} ({source.name!r} repeats)"
            )
        else:
            seen.add(source.name)
        if source is not None:
            if not source.image and not source.urls and not source.volume_source:
                yield FieldError(
                    f"{field}.source",
                    f"{field}.source needs image, urls or volumeSource: say where the adapter is",
                )
            yield from _urls(f"{field}.source.urls", source.urls)
        if adapter.strength is not None and not _strength_ok(adapter.strength):
            yield FieldError(
                f"{field}.strength", f"{field}.{messages.ADAPTER_STRENGTH}; got {adapter.strength!r}"
            )


def _strength_ok(value: str) -> bool:
    return re.fullmatch(STRENGTH_PATTERN, value) is not None


def _access(preset: PresetSpec, model: ModelPreset, field: str) -> Iterator[FieldError]:
    options = preset.preset_options
    if preset.access_mode == "private" and not (options and options.image):
        yield FieldError(
            f"{field}.presetOptions.image",
            f"{field}.presetOptions.image is required with accessMode private: name the image holding the weights",
        )
    if model.gated and preset.access_mode != "private" and not (options and options.model_access_secret):
        yield FieldError(
            f"{field}.presetOptions.modelAccessSecret",
            f"{field}.presetOptions.modelAccessSecret is required: {model.name} ({model.hf_id}) is gated on "
            "Hugging Face; name a Secret whose HF_TOKEN key holds a token that accepted its licence",
        )


def _fits(model: ModelPreset, sku: GpuSku, max_model_len: int | None) -> Iterator[FieldError | bool]:
    try:
        yield estimate(model, sku, max_model_len=max_model_len).node_count > 1
    except DoesNotFit as exc:
        yield FieldError("resource.instanceType", f"resource.instanceType: {exc}")
    except EstimateError as exc:
        yield FieldError("inference.config", f"inference.config: {exc}")


def _tuning(
    ws: Workspace, catalog: Catalog, sku: GpuSku | None, url_allowed: tuple[IPNetwork, ...]
) -> Iterator[FieldError]:
    tun = ws.tuning
    assert tun is not None
    if tun.preset is None:
        yield FieldError("tuning.preset", "tuning.preset is required: name the catalog model to fine-tune")
    else:
        found = _model(catalog, "tuning.preset.name", tun.preset.name)
        if isinstance(found, FieldError):
            yield found
        elif not found.supports_tuning:
            tunable = ", ".join(sorted(m.name for m in catalog.models.values() if m.supports_tuning))
            yield FieldError(
                "tuning.preset.name",
                f"tuning.preset.name: {found.name} cannot be fine-tuned; models that can: {tunable}",
            )
        else:
            yield from _access(tun.preset, found, "tuning.preset")
            if found.on_cpu and tun.method == "qlora":
                yield FieldError(
                    "tuning.method",
                    f"tuning.method: {found.name} trains on CPU, and qlora's 4-bit kernels "
                    "(bitsandbytes) need a CUDA GPU; use method: lora",
                )
            elif sku is not None:
                try:
                    check_tuning_fits(found, sku, tun.method or "lora", catalog=catalog)
                except DoesNotFit as exc:
                    yield FieldError("resource.instanceType", f"resource.instanceType: {exc}")
    if tun.method not in ("lora", "qlora"):
        yield FieldError("tuning.method", f"tuning.method must be lora or qlora, not {tun.method!r}")
    yield from _tuning_input(tun.input, url_allowed)
    out = tun.output
    if out is None:
        yield FieldError("tuning.output", messages.TUNING_OUTPUT_ONE_OF)
    else:
        if bool(out.image) == bool(out.volume_source):
            yield FieldError("tuning.output", messages.TUNING_OUTPUT_ONE_OF)
        if out.image and not out.image_push_secret:
            yield FieldError("tuning.output.imagePushSecret", messages.TUNING_OUTPUT_PUSH_SECRET)


def _tuning_input(source: DataSource | None, url_allowed: tuple[IPNetwork, ...]) -> Iterator[FieldError]:
    if source is None:
        yield FieldError("tuning.input", messages.TUNING_INPUT_ONE_OF)
        return
    given = [bool(source.urls), bool(source.image), bool(source.volume_source)]
    if sum(given) != 1:
        yield FieldError("tuning.input", messages.TUNING_INPUT_ONE_OF)
    yield from _urls("tuning.input.urls", source.urls, url_allowed)


def _urls(field: str, urls: list[str] | None, allowed: tuple[IPNetwork, ...] = ()) -> Iterator[FieldError]:
    for i, url in enumerate(urls or []):
        problem = url_problem(url, allowed)
        if problem is not None:
            yield FieldError(
                f"{field}[{i}]", f"{field}[{i}] {url!r} {problem}; use a public http(s) URL or a volumeSource"
            )
