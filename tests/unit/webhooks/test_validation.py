"""The admission rules as pure functions: each bad case yields its field and message."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from kaitopy.api import Workspace, messages
from kaitopy.presets import Catalog
from kaitopy.webhooks import FieldError, pydantic_errors, validate_create, validate_update


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def phi3(**inference: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "ws", "namespace": "default"},
        "resource": {"instanceType": "Standard_NC6s_v3", "labelSelector": {"matchLabels": {"apps": "phi-3"}}},
        "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}, **inference},
    }


def tuning(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "preset": {"name": "phi-3-mini-4k-instruct"},
        "method": "qlora",
        "input": {"urls": ["https://example.com/data.parquet"]},
        "output": {"image": "registry.example.com/a:1", "imagePushSecret": "push"},
    }
    base.update(spec)
    return {
        "metadata": {"name": "t"},
        "resource": {
            "instanceType": "Standard_NC24ads_A100_v4",
            "labelSelector": {"matchLabels": {"a": "t"}},
        },
        "tuning": {k: v for k, v in base.items() if v is not None},
    }


def errors(raw: dict[str, Any], catalog: Catalog, **kw: Any) -> list[FieldError]:
    return validate_create(Workspace.model_validate(raw), catalog, **kw)


def only(found: list[FieldError]) -> FieldError:
    assert len(found) == 1, found
    return found[0]


def test_valid_workspaces_pass(catalog: Catalog) -> None:
    assert errors(phi3(), catalog) == []
    assert errors(tuning(), catalog) == []


def test_unknown_preset(catalog: Catalog) -> None:
    raw = phi3()
    raw["inference"]["preset"]["name"] = "phi-3-mini-4k"  # a legacy spelling resolves
    assert errors(raw, catalog) == []
    raw["inference"]["preset"]["name"] = "phi-3-mini-4k-instuct"
    e = only(errors(raw, catalog))
    assert e.field == "inference.preset.name" and "did you mean phi-3-mini-4k-instruct" in e.message


def test_unknown_instance_type(catalog: Catalog) -> None:
    raw = phi3()
    raw["resource"]["instanceType"] = "Standard_NC6"
    e = only(errors(raw, catalog))
    assert e.field == "resource.instanceType" and "supported instance types: Standard_NC6s_v3" in e.message


def test_gpu_too_small(catalog: Catalog) -> None:
    raw = phi3()
    raw["inference"]["preset"]["name"] = "phi-3-medium-4k-instruct"
    e = only(errors(raw, catalog))
    assert e.field == "resource.instanceType"
    assert "needs 26.4 GiB" in e.message and "instance types that fit:" in e.message


def test_max_model_len_decides_the_fit(catalog: Catalog) -> None:
    raw = phi3()
    raw["inference"]["preset"]["name"] = "phi-3-mini-128k-instruct"
    assert errors(raw, catalog) == []  # unset: admitted on the weights, context fitted at start
    assert "max_model_len to 16384" in only(errors(raw, catalog, max_model_len=131072)).message
    assert errors(raw, catalog, max_model_len=16384) == []
    assert only(errors(raw, catalog, max_model_len=10**9)).field == "inference.config"


def test_both_and_neither(catalog: Catalog) -> None:
    both = phi3()
    both["tuning"] = tuning()["tuning"]
    assert messages.EXACTLY_ONE_OF in [e.message for e in errors(both, catalog)]
    neither = phi3()
    del neither["inference"]
    assert only(errors(neither, catalog)).message == messages.EXACTLY_ONE_OF


def test_preset_and_template(catalog: Catalog) -> None:
    pod = {"spec": {"containers": [{"name": "model", "image": "example.com/model:1"}]}}
    assert only(errors(phi3(template=pod), catalog)).message == messages.PRESET_AND_TEMPLATE
    raw = phi3()
    raw["inference"] = {"config": "c"}
    assert only(errors(raw, catalog)).message == messages.PRESET_OR_TEMPLATE
    raw["inference"] = {"template": pod}
    assert errors(raw, catalog) == []
    raw["inference"] = {"template": {"spec": {"containers": []}}}  # no container: no pod to run
    with pytest.raises(ValidationError) as info:
        Workspace.model_validate(raw)
    assert only(pydantic_errors(info.value)).field == "inference.template"


def test_adapter_rules(catalog: Catalog) -> None:
    eleven = [{"source": {"name": f"a{i}", "image": "i"}} for i in range(11)]
    with pytest.raises(ValidationError) as info:
        Workspace.model_validate(phi3(adapters=eleven))
    assert only(pydantic_errors(info.value)).field == "inference.adapters"
    dup = [{"source": {"name": "a", "image": "i"}}, {"source": {"name": "a", "image": "j"}}]
    e = only(errors(phi3(adapters=dup), catalog))
    assert e.field == "inference.adapters[1].source.name" and messages.ADAPTER_NAMES_UNIQUE in e.message
    nameless = [{"source": {"image": "i"}}]
    assert only(errors(phi3(adapters=nameless), catalog)).field == "inference.adapters[0].source.name"
    empty = [{"source": {"name": "a"}}]
    assert only(errors(phi3(adapters=empty), catalog)).field == "inference.adapters[0].source"
    private_url = [{"source": {"name": "a", "urls": ["http://192.168.1.10/a.safetensors"]}}]
    assert "192.168.1.10, a private address" in only(errors(phi3(adapters=private_url), catalog)).message
    template = phi3()
    pod = {"spec": {"containers": [{"name": "model", "image": "example.com/model:1"}]}}
    template["inference"] = {"template": pod, "adapters": [{"source": {"name": "a", "image": "i"}}]}
    assert "adapters need inference.preset" in only(errors(template, catalog)).message


def test_adapters_on_a_model_without_lora(catalog: Catalog) -> None:
    raw = phi3(adapters=[{"source": {"name": "a", "image": "i"}}])
    raw["resource"]["instanceType"] = "Standard_NC24ads_A100_v4"
    raw["inference"]["preset"]["name"] = "gpt-oss-20b"
    assert "gpt-oss-20b does not support LoRA adapters" in only(errors(raw, catalog)).message


def test_strength_is_checked_by_the_model() -> None:
    with pytest.raises(ValidationError) as info:
        Workspace.model_validate(phi3(adapters=[{"source": {"name": "a", "image": "i"}, "strength": "1.5"}]))
    e = only(pydantic_errors(info.value))
    assert e.field == "inference.adapters.0.strength" and messages.ADAPTER_STRENGTH in e.message


def test_access_rules(catalog: Catalog) -> None:
    raw = phi3()
    raw["inference"]["preset"]["accessMode"] = "private"
    assert only(errors(raw, catalog)).field == "inference.preset.presetOptions.image"
    raw["inference"]["preset"]["presetOptions"] = {"image": "reg/phi:1"}
    assert errors(raw, catalog) == []
    gated = phi3()
    gated["resource"]["instanceType"] = "Standard_NC24ads_A100_v4"
    gated["inference"]["preset"]["name"] = "llama-3.1-8b-instruct"
    e = only(errors(gated, catalog))
    assert e.field == "inference.preset.presetOptions.modelAccessSecret" and "gated" in e.message
    gated["inference"]["preset"]["presetOptions"] = {"modelAccessSecret": "hf"}
    assert errors(gated, catalog) == []


@pytest.mark.parametrize(
    ("spec", "field", "fragment"),
    [
        ({"preset": None}, "tuning.preset", "tuning.preset is required"),
        ({"preset": {"name": "gpt-oss-20b"}}, "tuning.preset.name", "cannot be fine-tuned; models that can:"),
        ({"input": None}, "tuning.input", messages.TUNING_INPUT_ONE_OF),
        (
            {"input": {"urls": ["https://e.com/d"], "image": "i"}},
            "tuning.input",
            messages.TUNING_INPUT_ONE_OF,
        ),
        ({"output": None}, "tuning.output", messages.TUNING_OUTPUT_ONE_OF),
        (
            {"output": {"image": "i", "volumeSource": {"emptyDir": {}}, "imagePushSecret": "s"}},
            "tuning.output",
            "exactly one",
        ),
        ({"output": {"image": "i"}}, "tuning.output.imagePushSecret", messages.TUNING_OUTPUT_PUSH_SECRET),
        ({"input": {"urls": ["file:///etc/passwd"]}}, "tuning.input.urls[0]", "must be an http(s) URL"),
        ({"input": {"urls": ["http://[::1]/d"]}}, "tuning.input.urls[0]", "::1, a loopback address"),
        ({"input": {"urls": ["http://169.254.169.254/"]}}, "tuning.input.urls[0]", "link-local"),
        ({"input": {"urls": ["http://metadata.google.internal/"]}}, "tuning.input.urls[0]", "internal"),
        ({"input": {"urls": ["http://2130706433/d"]}}, "tuning.input.urls[0]", "as 127.0.0.1), a loopback"),
        ({"input": {"urls": ["https://172.16.3.4/d"]}}, "tuning.input.urls[0]", "16.3.4, a private address"),
    ],
)
def test_tuning_rules(catalog: Catalog, spec: dict[str, Any], field: str, fragment: str) -> None:
    e = only(errors(tuning(**spec), catalog))
    assert e.field == field and fragment in e.message


def test_tuning_memory(catalog: Catalog) -> None:
    raw = tuning(preset={"name": "phi-3-medium-4k-instruct"})
    raw["resource"]["instanceType"] = "Standard_NC6s_v3"
    e = only(errors(raw, catalog))
    assert (
        e.field == "resource.instanceType" and "qlora tuning of phi-3-medium-4k-instruct needs" in e.message
    )


def test_bad_method_is_a_model_error() -> None:
    with pytest.raises(ValidationError) as info:
        Workspace.model_validate(tuning(method="full"))
    e = only(pydantic_errors(info.value))
    assert e.field == "tuning.method" and "(got 'full')" in e.message  # the value as written


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["resource"].update(instanceType="Standard_NC24ads_A100_v4"),
            messages.IMMUTABLE_INSTANCE_TYPE,
        ),
        (
            lambda d: d["resource"].update(labelSelector={"matchLabels": {"z": "b"}}),
            messages.IMMUTABLE_LABEL_SELECTOR,
        ),
        (lambda d: d["resource"].update(count=2), messages.IMMUTABLE_COUNT),
        (
            lambda d: d["inference"]["preset"].update(name="phi-3.5-mini-instruct"),
            messages.IMMUTABLE_INFERENCE_PRESET,
        ),
    ],
)
def test_immutable_inference_fields(catalog: Catalog, change: Any, message: str) -> None:
    old = phi3()
    new = copy.deepcopy(old)
    change(new)
    found = validate_update(Workspace.model_validate(old), Workspace.model_validate(new), catalog)
    assert message in [e.message for e in found]


def test_immutable_tuning_fields_and_toggle(catalog: Catalog) -> None:
    old = Workspace.model_validate(tuning())
    method = Workspace.model_validate(tuning(method="lora"))
    assert [e.message for e in validate_update(old, method, catalog)] == [messages.IMMUTABLE_TUNING_METHOD]
    preset = Workspace.model_validate(tuning(preset={"name": "phi-3-mini-128k-instruct"}))
    assert [e.message for e in validate_update(old, preset, catalog)] == [messages.IMMUTABLE_TUNING_PRESET]
    toggled = Workspace.model_validate({**tuning(), "tuning": None, "inference": phi3()["inference"]})
    assert messages.NO_TOGGLE in [e.message for e in validate_update(old, toggled, catalog)]


def test_adapters_may_change_on_update(catalog: Catalog) -> None:
    old = Workspace.model_validate(phi3())
    new = Workspace.model_validate(
        phi3(adapters=[{"source": {"name": "a", "image": "i"}, "strength": "0.2"}])
    )
    assert validate_update(old, new, catalog) == []
    assert validate_update(new, old, catalog) == []


def test_a_deleting_object_is_not_checked(catalog: Catalog) -> None:
    old = phi3()
    new = copy.deepcopy(old)
    new["resource"]["instanceType"] = "nonsense"
    new["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    assert validate_update(Workspace.model_validate(old), Workspace.model_validate(new), catalog) == []


def test_metadata_only_updates_are_never_blocked(catalog: Catalog) -> None:
    # The object became invalid after creation (the SKU left the catalog, say); the controller
    # must still be able to add or remove finalizers.
    old = phi3()
    old["resource"]["instanceType"] = "retired-sku"
    new = copy.deepcopy(old)
    new["metadata"]["finalizers"] = ["workspace.kaito.sh/finalizer"]
    assert validate_update(Workspace.model_validate(old), Workspace.model_validate(new), catalog) == []
    new["inference"]["adapters"] = [{"source": {"name": "a", "image": "i"}}]
    assert [
        e.field
        for e in validate_update(Workspace.model_validate(old), Workspace.model_validate(new), catalog)
    ] == ["resource.instanceType"]


@pytest.mark.parametrize(
    ("name", "preset", "instance_type", "fix"),
    [
        ("phi.3.mini", "phi-3-mini-4k-instruct", "Standard_NC6s_v3", "'phi-3-mini'"),
        ("3phi", "phi-3-mini-4k-instruct", "Standard_NC6s_v3", "'ws-3phi'"),
        ("a" * 64, "phi-3-mini-4k-instruct", "Standard_NC6s_v3", "at most 63 characters"),
        # Llama 70b spans two single-A100 nodes: a StatefulSet, whose pod labels need <= 52.
        ("b" * 53, "llama-3.3-70b-instruct", "Standard_NC24ads_A100_v4", "at most 52 characters"),
    ],
)
def test_names_that_cannot_name_the_objects_are_refused(
    catalog: Catalog, name: str, preset: str, instance_type: str, fix: str
) -> None:
    raw = phi3()
    raw["metadata"]["name"] = name
    raw["resource"]["instanceType"] = instance_type
    raw["inference"]["preset"]["name"] = preset
    raw["inference"]["preset"]["presetOptions"] = {"modelAccessSecret": "hf"}  # llama is gated
    e = only(errors(raw, catalog))
    assert e.field == "metadata.name"
    assert repr(name) in e.message and fix in e.message


def test_long_names_fit_single_node_models(catalog: Catalog) -> None:
    raw = phi3()
    raw["metadata"]["name"] = "b" * 63
    assert errors(raw, catalog) == []


def test_partition_is_refused_as_not_supported_yet(catalog: Catalog) -> None:
    raw = phi3()
    raw["resource"]["partition"] = {"mode": "accelerator", "count": 2}
    e = only(errors(raw, catalog))
    assert e.field == "resource.partition" and "not supported by kaitopy yet" in e.message


@pytest.mark.parametrize("value", ["vllm", "transformers"])
def test_kaito_runtime_annotation_values_are_admitted(catalog: Catalog, value: str) -> None:
    raw = phi3()
    raw["metadata"]["annotations"] = {"kaito.sh/runtime": value}
    assert errors(raw, catalog) == []


def test_unknown_runtime_annotation_is_refused_at_apply_time(catalog: Catalog) -> None:
    # Kaito silently falls back to vLLM; a typo here would pick an engine the author did not ask for.
    raw = phi3()
    raw["metadata"]["annotations"] = {"kaito.sh/runtime": "vLLM-v1"}
    e = only(errors(raw, catalog))
    assert e.field == "metadata.annotations[kaito.sh/runtime]"
    assert "'vLLM-v1' is not a runtime; use one of vllm, transformers" in e.message


def test_vllm_runtime_annotation_on_a_cpu_model_is_refused(catalog: Catalog) -> None:
    raw = phi3()
    raw["inference"]["preset"]["name"] = "smollm2-135m-instruct"
    raw["metadata"]["annotations"] = {"kaito.sh/runtime": "vllm"}
    e = only(errors(raw, catalog))
    assert e.field == "metadata.annotations[kaito.sh/runtime]" and "transformers engine only" in e.message
