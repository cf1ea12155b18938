"""The planner agrees with admission: what the webhook admits, the controller can place."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kaitopy.api import MAX_NODE_COUNT, Workspace
from kaitopy.api.crd import workspace_schema
from kaitopy.controllers.workspace import job as jobs
from kaitopy.controllers.workspace import workload
from kaitopy.controllers.workspace.plan import PlanError, Settings
from kaitopy.controllers.workspace.planner import make_planner, parse_workspace
from kaitopy.presets import Catalog
from kaitopy.runtime.objects import freeze
from kaitopy.webhooks import validate_create

pytestmark = pytest.mark.unit


def tuning(preset: str, instance_type: str, method: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "t", "namespace": "default"},
        "resource": {"instanceType": instance_type, "labelSelector": {"matchLabels": {"a": "t"}}},
        "tuning": {
            "preset": {"name": preset},
            "method": method,
            "input": {"urls": ["https://example.com/data.parquet"]},
            "output": {"image": "registry.example.com/a:1", "imagePushSecret": "push"},
        },
    }


def test_admitted_qlora_job_is_planned_even_when_inference_would_not_fit() -> None:
    # Found by the property tests: the planner used to size tuning with the inference estimate
    # (weights + KV cache for the 128k context), refusing a QLoRA job the webhook had admitted.
    catalog = Catalog.load()
    raw = tuning("phi-3-medium-128k-instruct", "Standard_NC12s_v3", "qlora")
    assert validate_create(Workspace.model_validate(raw), catalog) == []
    plan = make_planner(catalog, Settings())(parse_workspace(raw))
    assert plan.tuning is not None
    assert (plan.node_count, plan.gpus_per_node, plan.tuning.gpus_per_node) == (1, 2, 2)
    assert plan.tuning.method == "qlora"
    assert plan.storage_gib >= 26  # room for the weights


def test_tuning_that_does_not_fit_is_refused_with_the_admission_reason() -> None:
    catalog = Catalog.load()
    raw = tuning("phi-3-medium-128k-instruct", "Standard_NC12s_v3", "lora")
    refusal = validate_create(Workspace.model_validate(raw), catalog)
    assert [e.field for e in refusal] == ["resource.instanceType"]
    with pytest.raises(PlanError) as err:
        make_planner(catalog, Settings())(parse_workspace(raw))
    assert err.value.reason == "InsufficientGPUMemory"
    assert "or use qlora" in str(err.value)


def test_tuning_volumes_from_the_cache_plan_and_hash() -> None:
    # Found by the fault suite: the informer hands out read-only mappings, and the plan kept the
    # volumeSource as one, so revision() (dataclasses.asdict deep-copies) raised on every reconcile.
    raw = tuning("phi-3-mini-4k-instruct", "Standard_NC24ads_A100_v4", "qlora")
    raw["tuning"]["output"] = {"volumeSource": {"persistentVolumeClaim": {"claimName": "out"}}}
    plan = make_planner(Catalog.load(), Settings())(
        parse_workspace(freeze(Workspace.model_validate(raw).to_dict()))
    )
    assert plan.tuning is not None
    assert plan.tuning.output_volume == {"persistentVolumeClaim": {"claimName": "out"}}
    assert len(plan.tuning.revision()) == 16
    assert jobs.tuning_job(plan.tuning)["kind"] == "Job"


@pytest.mark.parametrize("ports", [[{}], [{"containerPort": "http"}], ["x"], "x", [{"containerPort": True}]])
def test_a_template_port_of_any_shape_gets_a_service(ports: Any) -> None:
    # Found by the property tests: the template is schemaless, and a port without containerPort
    # raised KeyError while building the Service, on every reconcile.
    raw = {
        "metadata": {"name": "c", "namespace": "default"},
        "resource": {"instanceType": "Standard_NC6s_v3", "labelSelector": {"matchLabels": {"a": "c"}}},
        "inference": {"template": {"spec": {"containers": [{"name": "c", "image": "i", "ports": ports}]}}},
    }
    assert validate_create(Workspace.model_validate(raw), Catalog.load()) == []
    plan = make_planner(Catalog.load(), Settings())(
        parse_workspace(freeze(Workspace.model_validate(raw).to_dict()))
    )
    assert plan.inference is not None
    assert workload.service(plan.inference)["spec"]["ports"][0]["targetPort"] == 80


def test_node_count_is_bounded() -> None:
    # Found by the property tests: count had no ceiling, and a template workspace asks for
    # `count` NodeClaims: 2**62 passes int64 and would have the controller create claims forever.
    raw = tuning("phi-3-mini-4k-instruct", "Standard_NC24ads_A100_v4", "qlora")
    raw["resource"]["count"] = MAX_NODE_COUNT + 1
    with pytest.raises(ValidationError, match="less than or equal to 16"):
        Workspace.model_validate(raw)
    assert workspace_schema()["properties"]["resource"]["properties"]["count"]["maximum"] == MAX_NODE_COUNT


def test_too_many_input_urls_are_refused_naming_the_field_and_the_limit() -> None:
    raw = tuning("phi-3-mini-4k-instruct", "Standard_NC24ads_A100_v4", "qlora")
    raw["tuning"]["input"]["urls"] = [f"https://example.com/d{i}.jsonl" for i in range(4)]
    settings = Settings(tuning_max_urls=3, tuning_max_input_bytes=10**9, tuning_deadline_s=3600)
    with pytest.raises(PlanError) as err:
        make_planner(Catalog.load(), settings)(parse_workspace(raw))
    assert err.value.reason == "InvalidWorkspace"
    assert str(err.value).startswith("tuning.input.urls: 4 URLs is over the limit of 3 (the controller's")
    raw["tuning"]["input"]["urls"] = raw["tuning"]["input"]["urls"][:3]
    plan = make_planner(Catalog.load(), settings)(parse_workspace(raw))
    assert plan.tuning is not None
    assert (plan.tuning.max_input_urls, plan.tuning.max_input_bytes, plan.tuning.deadline_s) == (
        3,
        10**9,
        3600,
    )
    assert plan.tuning.weights_gib > 0  # sizes the weights volume
    spec = jobs.tuning_job(plan.tuning)["spec"]
    assert spec["activeDeadlineSeconds"] == 3600


def test_tuning_limit_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from kaitopy.controllers.workspace import app

    monkeypatch.setenv("KAITOPY_TUNING_MAX_URLS", "7")
    parser = argparse.ArgumentParser()
    app.add_arguments(parser)
    settings = app.settings_from(
        parser.parse_args(["--tuning-deadline=600", "--tuning-max-input-bytes=1024"])
    )
    assert (settings.tuning_deadline_s, settings.tuning_max_urls, settings.tuning_max_input_bytes) == (
        600,
        7,
        1024,
    )
    with pytest.raises(SystemExit, match="--tuning-deadline 0: must be a positive whole number"):
        app.settings_from(parser.parse_args(["--tuning-deadline=0"]))


def inference(preset: str, instance_type: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "w", "namespace": "default"},
        "resource": {"instanceType": instance_type, "labelSelector": {"matchLabels": {"a": "w"}}},
        "inference": {"preset": {"name": preset}, "config": "params"},
    }


def test_planner_sizes_for_the_context_the_webhook_admitted() -> None:
    # The webhook admits phi-3-mini-128k on a V100 with max-model-len 16384 from the inference
    # config; the controller, given the same setting, plans it and passes it to the server.
    catalog = Catalog.load()
    raw = inference("phi-3-mini-128k-instruct", "Standard_NC6s_v3")
    assert validate_create(Workspace.model_validate(raw), catalog, max_model_len=16384) == []
    plan = make_planner(catalog, Settings())(parse_workspace(freeze(raw)), max_model_len=16384)
    assert plan.inference is not None and plan.inference.max_model_len == 16384
    assert "--max-model-len=16384" in workload.server_args(plan.inference)
    # What admission refuses for that context, the planner refuses with the same reason.
    refusal = validate_create(Workspace.model_validate(raw), catalog, max_model_len=131072)
    with pytest.raises(PlanError) as err:
        make_planner(catalog, Settings())(parse_workspace(freeze(raw)), max_model_len=131072)
    assert err.value.reason == "InsufficientGPUMemory"
    assert str(err.value) in refusal[0].message


def test_unset_context_is_left_to_the_engine() -> None:
    catalog = Catalog.load()
    plan = make_planner(catalog, Settings())(
        parse_workspace(freeze(inference("gemma-3-4b-instruct", "Standard_NV36ads_A10_v5")))
    )
    assert plan.inference is not None and plan.inference.max_model_len is None
    assert not any(a.startswith("--max-model-len") for a in workload.server_args(plan.inference))


def test_private_access_takes_the_weights_from_the_users_image() -> None:
    # Kaito's accessMode private: the image holds the weights (under /workspace/weights); nothing
    # may come from Hugging Face, and no empty volume may hide the image's files.
    raw = inference("phi-3-mini-4k-instruct", "Standard_NC24ads_A100_v4")
    del raw["inference"]["config"]
    raw["inference"]["preset"].update(
        accessMode="private",
        presetOptions={"image": "registry.example.com/my-phi3:1", "imagePullSecrets": ["pull"]},
    )
    assert validate_create(Workspace.model_validate(raw), Catalog.load()) == []
    settings = Settings()
    plan = make_planner(Catalog.load(), settings)(parse_workspace(freeze(raw)))
    assert plan.inference is not None
    args = workload.server_args(plan.inference)
    assert not any(a.startswith(("--hf-model-id", "--allow-download")) for a in args)
    spec = workload.deployment(plan.inference)["spec"]["template"]["spec"]
    assert spec["containers"][0]["image"] == settings.runtime_image
    init = {c["name"]: c for c in spec["initContainers"]}
    assert init["weights"]["image"] == "registry.example.com/my-phi3:1"
    assert "/workspace/weights/." in init["weights"]["command"]
    assert "tools" in init and {"name": "pull"} in spec["imagePullSecrets"]


def test_resource_count_does_what_its_schema_description_says() -> None:
    # Issue 19.6: the description (kubectl explain) used to say a larger count is honoured; the
    # planner sizes presets from the model alone.
    description = workspace_schema()["properties"]["resource"]["properties"]["count"]["description"]
    assert "not used for presets" in description
    raw = inference("phi-3-mini-4k-instruct", "Standard_NC6s_v3")
    del raw["inference"]["config"]
    raw["resource"]["count"] = 3
    plan = make_planner(Catalog.load(), Settings())(parse_workspace(freeze(raw)))
    assert plan.node_count == 1


def cpu_tuning(urls: list[str], output: str = "10.229.254.1:5000/adapters/kiwi:1") -> dict[str, Any]:
    raw = tuning("smollm2-135m-instruct", "Standard_NC6s_v3", "lora")
    raw["tuning"]["input"] = {"urls": urls}
    raw["tuning"]["output"]["image"] = output
    return raw


def test_a_cpu_preset_trains_on_cpu_with_its_weights_artifact() -> None:
    settings = Settings(
        weights_registry="10.229.254.1:5000/kaitopy/weights",
        weights_digests={"smollm2-135m-instruct": "sha256:" + "ab" * 32},
        weights_plain_http=True,
        plain_http_registries=("10.229.254.1:5000",),
        url_allowed_networks=("10.229.254.1/32",),
    )
    raw = cpu_tuning(["http://10.229.254.1:8080/chat.jsonl"])
    plan = make_planner(Catalog.load(), settings)(parse_workspace(raw))
    t = plan.tuning
    assert t is not None and t.cpu is not None
    assert t.image == settings.cpu_runtime_image  # the CPU image: torch's CPU build, no CUDA
    assert t.weights_image == "10.229.254.1:5000/kaitopy/weights/smollm2-135m-instruct:0.1.2"
    assert (t.push_plain_http, t.allowed_networks) == (True, ("10.229.254.1/32",))
    spec = jobs.tuning_job(t)["spec"]["template"]["spec"]
    init = {c["name"]: c for c in spec["initContainers"]}
    assert list(init) == ["fetch-data", "weights", "train"]
    assert "--allow-network=10.229.254.1/32" in init["fetch-data"]["args"]
    assert (
        f"--digest=sha256:{'ab' * 32}" in init["weights"]["args"]
        and "--plain-http" in init["weights"]["args"]
    )
    trainer = init["train"]["resources"]
    assert "nvidia.com/gpu" not in trainer["requests"] and trainer["requests"]["memory"] == "2560Mi"
    assert "--plain-http" in spec["containers"][0]["args"]


def test_the_admins_lists_are_not_widened_by_the_workspace() -> None:
    # An output registry not on the plain-HTTP list pushes over TLS; without input URLs the
    # allowance is not handed to the Job at all (nothing of it is needed).
    settings = Settings(
        plain_http_registries=("10.229.254.1:5000",), url_allowed_networks=("10.229.254.1/32",)
    )
    raw = cpu_tuning(["https://example.com/chat.jsonl"], output="10.229.254.1:5001/adapters/kiwi:1")
    t = make_planner(Catalog.load(), settings)(parse_workspace(raw)).tuning
    assert t is not None and not t.push_plain_http
    raw["tuning"]["input"] = {"image": "example.com/data:1"}
    t = make_planner(Catalog.load(), settings)(parse_workspace(raw)).tuning
    assert t is not None and t.allowed_networks == ()


@pytest.mark.parametrize(
    ("image", "host"),
    [
        ("10.229.254.1:5000/a/b:1", "10.229.254.1:5000"),
        ("localhost/a:1", "localhost"),
        ("myregistry.azurecr.io/adapters/phi:v1", "myregistry.azurecr.io"),
        ("library/busybox:1", "docker.io"),
        ("busybox", "docker.io"),
    ],
)
def test_registry_host(image: str, host: str) -> None:
    from kaitopy.controllers.workspace.planner import registry_host

    assert registry_host(image) == host


def test_gpu_tuning_keeps_its_revision_when_the_new_fields_are_unset() -> None:
    # An upgrade must not restart running tuning Jobs: unset new fields leave the hash alone.
    from dataclasses import asdict, replace

    plan = make_planner(Catalog.load(), Settings())(
        parse_workspace(tuning("phi-3-mini-128k-instruct", "Standard_NC12s_v3", "lora"))
    )
    t = plan.tuning
    assert t is not None and t.cpu is None and t.weights_image is None
    import hashlib
    import json

    old = {k: v for k, v in asdict(t).items() if k not in plan_fields_added_now()}
    assert (
        t.revision() == hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:16]
    )
    assert replace(t, push_plain_http=True).revision() != t.revision()


def plan_fields_added_now() -> set[str]:
    return {
        "weights_image",
        "weights_digest",
        "weights_plain_http",
        "weights_pull_secret",
        "cpu",
        "push_plain_http",
        "allowed_networks",
    }


def test_cpu_qlora_and_private_urls_at_admission() -> None:
    from ipaddress import ip_network

    catalog = Catalog.load()
    raw = cpu_tuning(["http://10.229.254.1:8080/chat.jsonl"])
    errors = validate_create(Workspace.model_validate(raw), catalog)
    assert [e.field for e in errors] == ["tuning.input.urls[0]"]
    assert "a private address" in errors[0].message
    allowed = (ip_network("10.229.254.1/32"),)
    assert validate_create(Workspace.model_validate(raw), catalog, url_allowed=allowed) == []
    raw["tuning"]["method"] = "qlora"
    errors = validate_create(Workspace.model_validate(raw), catalog, url_allowed=allowed)
    assert [e.field for e in errors] == ["tuning.method"] and "use method: lora" in errors[0].message


def test_qlora_on_a_cpu_model_is_refused_by_the_fit_rule_itself() -> None:
    # One rule for the planner, admission and the property tests' generators (tuning_triples):
    # a model that trains on CPU fits every node for lora, none for qlora.
    from kaitopy.presets import check_tuning_fits
    from kaitopy.presets.estimator import EstimateError

    catalog = Catalog.load()
    model, sku = catalog.model("smollm2-135m-instruct"), catalog.sku("Standard_NC6s_v3")
    check_tuning_fits(model, sku, "lora", catalog=catalog)
    with pytest.raises(EstimateError, match="use lora"):
        check_tuning_fits(model, sku, "qlora", catalog=catalog)
    raw = cpu_tuning(["https://example.com/chat.jsonl"])
    raw["tuning"]["method"] = "qlora"
    with pytest.raises(PlanError) as err:
        make_planner(catalog, Settings())(parse_workspace(raw))
    assert err.value.reason == "InvalidWorkspace" and "tuning.method" in str(err.value)


def test_a_stored_workspace_the_model_cannot_read_is_a_plan_error_naming_the_field() -> None:
    # Stored with the webhook off (or before a stricter rule): the controller reads it with the
    # webhook's model, once, and says which field is wrong instead of failing further down.
    raw = tuning("phi-3-mini-4k-instruct", "Standard_NC12s_v3", "lora")
    raw["tuning"]["method"] = "full"
    with pytest.raises(PlanError) as err:
        parse_workspace(freeze(raw))
    assert err.value.reason == "InvalidWorkspace"
    assert str(err.value).startswith("tuning.method: ")


def test_the_planner_reads_the_typed_workspace() -> None:
    typed = parse_workspace(freeze(tuning("phi-3-mini-4k-instruct", "Standard_NC12s_v3", "qlora")))
    assert isinstance(typed, Workspace)
    plan = make_planner(Catalog.load(), Settings())(typed)
    assert plan.tuning is not None and plan.tuning.method == "qlora"
    assert plan.tuning.output_push_secret == "push" and plan.match_labels == {"a": "t"}


def test_a_status_the_model_cannot_read_does_not_make_the_spec_unplannable() -> None:
    raw = tuning("phi-3-mini-4k-instruct", "Standard_NC12s_v3", "lora")
    raw["status"] = {"conditions": [{"type": "Ready", "status": "Maybe"}], "workerNodes": "n0"}
    typed = parse_workspace(freeze(raw))
    assert typed.status is None and typed.tuning is not None
