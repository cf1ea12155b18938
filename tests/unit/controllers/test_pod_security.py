"""Every pod kaitopy builds from a preset meets Pod Security "restricted" and the issue's limits:
non-root with a fixed uid, no escalation, no capabilities, RuntimeDefault seccomp, read-only root,
no API token, CPU and memory requests on every container, a size limit on every emptyDir, a
deadline on the tuning Job. A user's template is left as written."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from kaitopy.controllers.workspace import job, workload
from kaitopy.controllers.workspace.plan import AdapterPlan, InferencePlan, Settings, TuningPlan
from kaitopy.controllers.workspace.podsecurity import RUN_AS_UID

INFERENCE = InferencePlan(
    name="ws",
    namespace="default",
    preset="phi-3-mini-4k-instruct",
    runtime="vllm",
    image="ghcr.io/kaitopy/runtime:0.1.0",
    node_count=1,
    gpus_per_node=1,
    tensor_parallel_size=1,
    pipeline_parallel_size=1,
    max_model_len=4096,
    dtype="float16",
    hf_model_id="microsoft/Phi-3-mini-4k-instruct",
    weights_gib=7.6,
    match_labels={"apps": "ws"},
)
TUNING = TuningPlan(
    name="tune",
    namespace="default",
    preset="phi-3-mini-4k-instruct",
    method="qlora",
    image="ghcr.io/kaitopy/runtime:0.1.0",
    hf_model_id="microsoft/Phi-3-mini-4k-instruct",
    gpus_per_node=1,
    match_labels={"apps": "tune"},
    input_urls=("https://example.com/d.jsonl",),
    output_image="registry.local/adapter:1",
    output_push_secret="push",
    weights_gib=7.6,
)


def pod_specs() -> dict[str, dict[str, Any]]:
    adapters = (AdapterPlan("ada", "registry.local/ada:1"), AdapterPlan("bob", "registry.local/bob:1"))
    return {
        "single node": workload.deployment(INFERENCE)["spec"]["template"]["spec"],
        "adapters": workload.deployment(replace(INFERENCE, adapters=adapters))["spec"]["template"]["spec"],
        "weights image": workload.deployment(
            replace(INFERENCE, weights_image="r.local/w:1", weights_pull_secret="creds")
        )["spec"]["template"]["spec"],
        "multi node": workload.statefulset(replace(INFERENCE, node_count=2, pipeline_parallel_size=2))[
            "spec"
        ]["template"]["spec"],
        "tuning from urls": job.tuning_job(TUNING)["spec"]["template"]["spec"],
        "tuning from an image": job.tuning_job(replace(TUNING, input_urls=(), input_image="r.local/data:1"))[
            "spec"
        ]["template"]["spec"],
        "tuning without push": job.tuning_job(replace(TUNING, output_image=None, output_push_secret=None))[
            "spec"
        ]["template"]["spec"],
    }


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*(spec.get("initContainers") or []), *spec["containers"]]


@pytest.mark.parametrize("kind", list(pod_specs()))
def test_every_pod_and_container_is_restricted(kind: str) -> None:
    spec = pod_specs()[kind]
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_UID,
        "runAsGroup": RUN_AS_UID,
        "fsGroup": RUN_AS_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert spec["automountServiceAccountToken"] is False
    assert "hostNetwork" not in spec and "hostPID" not in spec and "hostIPC" not in spec
    for c in containers(spec):
        assert c["securityContext"] == {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        }, c["name"]
        # With the root read-only, the engines' writes go to /tmp and $HOME, both emptyDirs.
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert mounts["/tmp"] == "tmp" and mounts["/home/kaitopy"] == "home", c["name"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["HOME"] == "/home/kaitopy" and env["USER"] == "kaitopy", c["name"]


@pytest.mark.parametrize("kind", list(pod_specs()))
def test_every_container_requests_cpu_and_memory(kind: str) -> None:
    for c in containers(pod_specs()[kind]):
        requests = c["resources"]["requests"]
        assert requests.get("cpu") and requests.get("memory"), (kind, c["name"])


@pytest.mark.parametrize("kind", list(pod_specs()))
def test_every_empty_dir_has_a_size_limit(kind: str) -> None:
    empty_dirs = [v for v in pod_specs()[kind]["volumes"] if "emptyDir" in v]
    assert empty_dirs
    for v in empty_dirs:
        assert v["emptyDir"].get("sizeLimit"), (kind, v["name"])


def test_volume_limits_follow_the_model_and_the_download_budget() -> None:
    inference = {v["name"]: v for v in pod_specs()["single node"]["volumes"]}
    assert inference["weights"]["emptyDir"]["sizeLimit"] == "16Gi"  # 2 x 7.6 GiB, rounded up
    big = workload.deployment(replace(INFERENCE, weights_gib=140))["spec"]["template"]["spec"]
    assert {v["name"]: v for v in big["volumes"]}["weights"]["emptyDir"]["sizeLimit"] == "280Gi"
    tuning = {v["name"]: v for v in pod_specs()["tuning from urls"]["volumes"]}
    assert tuning["data"]["emptyDir"]["sizeLimit"] == "55Gi"  # 50 GiB budget + 10%
    small = job.tuning_job(replace(TUNING, max_input_bytes=2 * 1024**3))["spec"]["template"]["spec"]
    assert {v["name"]: v for v in small["volumes"]}["data"]["emptyDir"]["sizeLimit"] == "3Gi"
    fetch = small["initContainers"][0]
    assert "--max-total-bytes=2147483648" in fetch["args"] and "--max-urls=100" in fetch["args"]


def test_a_user_volume_source_is_kept_as_given() -> None:
    pvc = {"persistentVolumeClaim": {"claimName": "data"}}
    spec = job.tuning_job(replace(TUNING, input_urls=(), input_volume=pvc))["spec"]["template"]["spec"]
    assert {"name": "data", **pvc} in spec["volumes"]


def test_the_tuning_job_has_a_deadline() -> None:
    assert job.tuning_job(TUNING)["spec"]["activeDeadlineSeconds"] == Settings().tuning_deadline_s == 86400
    assert job.tuning_job(replace(TUNING, deadline_s=600))["spec"]["activeDeadlineSeconds"] == 600


def test_a_user_template_is_not_changed() -> None:
    template = {"spec": {"containers": [{"name": "server", "image": "my:1"}]}}
    spec = workload.deployment(replace(INFERENCE, template=template))["spec"]["template"]["spec"]
    assert "securityContext" not in spec and "automountServiceAccountToken" not in spec
    assert spec["containers"] == [{"name": "server", "image": "my:1"}]


def test_the_container_env_wins_over_the_defaults() -> None:
    spec = pod_specs()["single node"]
    env = spec["containers"][0]["env"]
    assert [e["name"] for e in env].count("HOME") == 1
    assert env[0]["name"] == "POD_NAME"  # the server's own env comes first
