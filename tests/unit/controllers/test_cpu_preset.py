"""The CPU preset (smollm2-135m-instruct): its weights come from an OCI artifact through an init
container, the server runs the transformers engine from the CPU image, with CPU and memory sized
from measurement instead of a GPU. Every other preset renders as before."""

from __future__ import annotations

from typing import Any

import pytest

from kaitopy.api import Workspace
from kaitopy.controllers.workspace import workload
from kaitopy.controllers.workspace.app import add_arguments, settings_from, weights_digests
from kaitopy.controllers.workspace.plan import GPU_RESOURCE, WEIGHTS_MOUNT, PlanError, Settings
from kaitopy.controllers.workspace.planner import make_planner, parse_workspace
from kaitopy.presets import Catalog
from kaitopy.webhooks import validate_create

pytestmark = pytest.mark.unit

PRESET = "smollm2-135m-instruct"
PIN = "sha256:" + "ab" * 32
SETTINGS = Settings(
    cpu_runtime_image="registry.local/kaitopy/model-server-cpu:1",
    weights_registry="registry.local:5000/kaitopy/models/",
    weights_digests={PRESET: PIN},
)


def workspace(preset: str = PRESET, instance_type: str = "Standard_NC6s_v3", **annotations: str) -> Any:
    raw = {
        "metadata": {"name": "smol", "namespace": "default", "annotations": annotations},
        "resource": {"instanceType": instance_type, "labelSelector": {"matchLabels": {"apps": "smol"}}},
        "inference": {"preset": {"name": preset}},
    }
    return Workspace.model_validate(raw)


def plan_of(ws: Any, settings: Settings = SETTINGS) -> Any:
    plan = make_planner(Catalog.load(), settings)(parse_workspace(ws.to_dict()))
    assert plan.inference is not None
    return plan


def pod_spec(settings: Settings = SETTINGS, **kw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = workload.deployment(plan_of(workspace(**kw), settings).inference)["spec"]
    return dict(spec["template"]["spec"])


def test_admitted_and_planned_on_a_v100_node_without_taking_its_gpu() -> None:
    ws = workspace()
    assert validate_create(ws, Catalog.load()) == []
    plan = plan_of(ws)
    # One node of the SKU is provisioned (the node claim still asks for its GPU)...
    assert (plan.node_count, plan.gpus_per_node) == (1, 1)
    inf = plan.inference
    assert (inf.runtime, inf.dtype, inf.max_model_len) == ("transformers", "float32", 8192)
    # ...but the pod takes CPU and memory, not the GPU.
    resources = pod_spec()["containers"][0]["resources"]
    assert resources == {
        "requests": {"cpu": "1", "memory": "1280Mi"},
        "limits": {"cpu": "2", "memory": "2560Mi"},
    }
    assert GPU_RESOURCE not in str(resources)


def test_the_cpu_image_and_no_hugging_face() -> None:
    container = pod_spec()["containers"][0]
    assert container["image"] == "registry.local/kaitopy/model-server-cpu:1"
    args = container["args"]
    assert "--engine=transformers" in args
    assert f"--model-dir={WEIGHTS_MOUNT}" in args
    assert "--allow-download" not in args
    assert not any(a.startswith("--hf-model-id") for a in args)
    assert {"name": "OMP_NUM_THREADS", "value": "2"} in container["env"]
    assert not any(e["name"] == "HF_TOKEN" for e in container["env"])


def test_an_init_container_pulls_the_pinned_weights_artifact_into_the_weights_volume() -> None:
    spec = pod_spec()
    [init] = spec["initContainers"]
    assert init["name"] == "weights"
    assert init["image"] == spec["containers"][0]["image"]  # the server's own image
    assert init["command"] == ["kaitopy"]
    assert init["args"] == [
        "weights",
        "pull",
        f"--image=registry.local:5000/kaitopy/models/{PRESET}:0.1.2",
        f"--dest={WEIGHTS_MOUNT}",
        f"--digest={PIN}",
    ]
    # The weights volume, and the writable /tmp and $HOME every container of ours gets.
    assert [m["name"] for m in init["volumeMounts"]] == ["weights", "tmp", "home"]
    assert init["volumeMounts"][0] == {"name": "weights", "mountPath": WEIGHTS_MOUNT}
    assert init["resources"]["limits"]["memory"] == "256Mi"
    assert {"name": "weights", "emptyDir": {"sizeLimit": "10Gi"}} in spec["volumes"]


def test_unpinned_and_plain_http() -> None:
    settings = Settings(weights_registry="127.0.0.1:5001/models", weights_plain_http=True)
    [init] = pod_spec(settings)["initContainers"]
    assert init["args"] == [
        "weights",
        "pull",
        f"--image=127.0.0.1:5001/models/{PRESET}:0.1.2",
        f"--dest={WEIGHTS_MOUNT}",
        "--plain-http",
    ]
    assert pod_spec(settings)["containers"][0]["image"] == Settings().cpu_runtime_image


def test_a_pull_secret_reaches_the_init_container_only() -> None:
    settings = Settings(weights_registry="r.local/m", weights_pull_secret="weights-creds")
    spec = pod_spec(settings)
    [init] = spec["initContainers"]
    assert init["args"][-1] == "--docker-config=/var/run/kaitopy/weights-auth/config.json"
    assert {"name": "weights-auth", "mountPath": "/var/run/kaitopy/weights-auth", "readOnly": True} in init[
        "volumeMounts"
    ]
    assert {
        "name": "weights-auth",
        "secret": {
            "secretName": "weights-creds",
            "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
        },
    } in spec["volumes"]
    assert not any(m["name"] == "weights-auth" for m in spec["containers"][0]["volumeMounts"])
    # A GPU preset gets neither, whatever the settings say.
    gpu = pod_spec(settings, preset="phi-3-mini-4k-instruct")
    assert "initContainers" not in gpu and not any(v["name"] == "weights-auth" for v in gpu["volumes"])


def test_the_default_weights_registry_sits_beside_the_default_images() -> None:
    [init] = pod_spec(Settings())["initContainers"]
    assert f"--image=ghcr.io/kaitopy/weights/{PRESET}:0.1.2" in init["args"]


def test_without_a_weights_registry_the_plan_says_which_setting_is_missing() -> None:
    with pytest.raises(PlanError) as err:
        plan_of(workspace(), Settings(weights_registry=""))
    assert err.value.reason == "WeightsRegistryUnset"
    assert "--weights-registry" in str(err.value) and "KAITOPY_WEIGHTS_REGISTRY" in str(err.value)


def test_vllm_runtime_annotation_is_refused_for_a_cpu_preset() -> None:
    with pytest.raises(PlanError) as err:
        plan_of(workspace(**{"kaito.sh/runtime": "vllm"}))
    assert err.value.reason == "InvalidRuntime"


def test_a_preset_image_option_still_wins() -> None:
    raw = workspace().to_dict()
    raw["inference"]["preset"]["presetOptions"] = {"image": "mine:1"}
    plan = make_planner(Catalog.load(), SETTINGS)(parse_workspace(raw))
    spec = workload.deployment(plan.inference)["spec"]["template"]["spec"]
    assert spec["containers"][0]["image"] == spec["initContainers"][0]["image"] == "mine:1"


@pytest.mark.parametrize("instance_type", ["Standard_NC6s_v3", "Standard_NC24ads_A100_v4"])
def test_gpu_presets_are_unchanged(instance_type: str) -> None:
    spec = pod_spec(preset="phi-3-mini-4k-instruct", instance_type=instance_type)
    container = spec["containers"][0]
    assert container["image"] == SETTINGS.runtime_image
    assert "initContainers" not in spec
    assert "--hf-model-id=microsoft/Phi-3-mini-4k-instruct" in container["args"]
    assert "--allow-download" in container["args"]
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "4Gi", GPU_RESOURCE: "1"},
        "limits": {GPU_RESOURCE: "1"},
    }
    assert not any(e["name"] == "OMP_NUM_THREADS" for e in container["env"])
    plan = plan_of(workspace("phi-3-mini-4k-instruct", instance_type), Settings())
    # Fields added for CPU presets stay out of the revision while unset: no rollout on upgrade.
    assert plan.inference.weights_image is None and plan.inference.cpu is None


def test_controller_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    monkeypatch.setenv("KAITOPY_CPU_RUNTIME_IMAGE", "cpu:2")
    monkeypatch.setenv("KAITOPY_WEIGHTS_REGISTRY", "r.local/m")
    monkeypatch.setenv("KAITOPY_WEIGHTS_DIGESTS", f"{PRESET}={PIN}")
    monkeypatch.setenv("KAITOPY_WEIGHTS_PLAIN_HTTP", "1")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    s = settings_from(parser.parse_args([]))
    assert (s.cpu_runtime_image, s.weights_registry, s.weights_plain_http) == ("cpu:2", "r.local/m", True)
    assert dict(s.weights_digests) == {PRESET: PIN}
    flags = parser.parse_args(
        ["--weights-registry=x/y", f"--weights-digest=other={PIN}", "--no-weights-plain-http"]
    )
    s = settings_from(flags)
    assert (s.weights_registry, dict(s.weights_digests), s.weights_plain_http) == (
        "x/y",
        {"other": PIN},
        False,
    )


@pytest.mark.parametrize("bad", ["nopreset", "p=sha256:short", "p=md5:" + "a" * 32, "=" + PIN])
def test_a_malformed_digest_pin_stops_the_controller(bad: str) -> None:
    with pytest.raises(SystemExit, match="PRESET=sha256"):
        weights_digests([bad], None)


MULTINODE = "smollm2-135m-instruct-multinode"
VLLM_SETTINGS = Settings(
    cpu_runtime_image="registry.local/kaitopy/model-server-cpu:1",
    cpu_vllm_runtime_image="registry.local/kaitopy/model-server-vllm-cpu:1",
    weights_registry="registry.local:5000/kaitopy/models",
    weights_digests={PRESET: PIN},
)


def test_the_multi_node_cpu_preset_is_two_pipeline_stages_on_vllm_cpu() -> None:
    ws = workspace(MULTINODE)
    assert validate_create(ws, Catalog.load()) == []
    plan = plan_of(ws, VLLM_SETTINGS)
    assert (plan.node_count, plan.gpus_per_node) == (2, 1)
    inf = plan.inference
    assert (inf.runtime, inf.pipeline_parallel_size, inf.tensor_parallel_size) == ("vllm", 2, 1)
    assert inf.multi_node
    # The checkpoint, the artifact and its pin are the single-node preset's: one set of weights.
    assert inf.weights_image == f"registry.local:5000/kaitopy/models/{PRESET}:0.1.2"
    assert inf.weights_digest == PIN
    sts = workload.statefulset(inf)
    assert sts["spec"]["replicas"] == 2
    spec = sts["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["image"] == spec["initContainers"][0]["image"] == VLLM_SETTINGS.cpu_vllm_runtime_image
    assert "--engine=vllm" in container["args"] and "--pipeline-parallel-size=2" in container["args"]
    assert f"--served-model-name={MULTINODE}" in container["args"]
    # Each rank takes CPU and memory, never the node's GPU.
    assert GPU_RESOURCE not in str(container["resources"])
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    assert {"name": "OMP_NUM_THREADS", "value": "2"} in container["env"]
    # vLLM's KV cache is sized from the container's memory limit, which a cgroup v1 node hides.
    limit = next(e for e in container["env"] if e["name"] == "KAITOPY_MEMORY_LIMIT")
    assert limit["valueFrom"]["resourceFieldRef"] == {"containerName": "model", "resource": "limits.memory"}


def test_a_hugging_face_id_names_the_single_node_preset_not_its_variant() -> None:
    assert Catalog.load().model("HuggingFaceTB/SmolLM2-135M-Instruct").name == PRESET


@pytest.mark.parametrize(("preset", "runtime"), [(PRESET, "vllm"), (MULTINODE, "transformers")])
def test_a_cpu_preset_refuses_the_other_engine(preset: str, runtime: str) -> None:
    errors = validate_create(workspace(preset, **{"kaito.sh/runtime": runtime}), Catalog.load())
    assert any("runs on CPU with the" in str(e) for e in errors), errors
