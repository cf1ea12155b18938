"""The `tune` steps accept exactly the argv the Workspace controller writes into the Job."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kaitopy.controllers.workspace.job import tuning_job
from kaitopy.controllers.workspace.plan import TuningPlan
from kaitopy.tuning import command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kaitopy tune")
    command.add_arguments(parser)
    return parser


def _kaitopy_containers(job: dict[str, Any]) -> list[dict[str, Any]]:
    spec = job["spec"]["template"]["spec"]
    return [
        c for c in [*spec.get("initContainers", []), *spec["containers"]] if c.get("command") == ["kaitopy"]
    ]


@pytest.mark.parametrize("config_map", [None, "my-training-config"])
def test_job_argv_parses(config_map: str | None) -> None:
    plan = TuningPlan(
        name="tune-phi",
        namespace="default",
        preset="phi-3-mini-128k-instruct",
        method="qlora",
        image="kaitopy:latest",
        hf_model_id="microsoft/Phi-3-mini-128k-instruct",
        gpus_per_node=1,
        match_labels={"apps": "tuning"},
        input_urls=("https://example.com/a.jsonl", "https://example.com/b.parquet"),
        output_image="myregistry.azurecr.io/adapters/phi:v1",
        output_push_secret="push-secret",
        config_map=config_map,
    )
    containers = _kaitopy_containers(tuning_job(plan))
    assert [c["name"] for c in containers] == ["fetch-data", "train", "push"]
    parsed = {c["name"]: _parser().parse_args(c["args"][1:]) for c in containers}
    assert all(c["args"][0] == "tune" for c in containers)

    fetch = parsed["fetch-data"]
    assert fetch.step == "fetch" and fetch.url == list(plan.input_urls) and not fetch.allow_private
    assert fetch.dest == Path("/mnt/data")

    train = parsed["train"]
    assert (train.step, train.method, train.hf_model_id) == ("train", "qlora", plan.hf_model_id)
    assert train.data_dir == Path("/mnt/data") and train.output_dir == Path("/mnt/results")
    assert (train.config is not None) == (config_map is not None)
    if train.config is not None:
        assert train.config.name == "training_config.yaml"

    push = parsed["push"]
    assert push.step == "push" and push.image == plan.output_image and push.dir == Path("/mnt/results")
    assert push.docker_config.name == ".dockerconfigjson" and not push.plain_http


def test_tune_is_registered_and_help_is_fast() -> None:
    probe = (
        "import sys, kaitopy.cli, kaitopy.tuning.command; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'oras', 'pyarrow') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"  # the controller image needs none of them
    out = subprocess.run(
        [sys.executable, "-m", "kaitopy", "tune", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for step in ("fetch", "train", "push", "pull"):
        assert step in out


def test_missing_step_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args([])
    assert exc.value.code == 2


def test_cpu_job_argv_parses() -> None:
    from kaitopy.controllers.workspace.plan import CpuPlan

    plan = TuningPlan(
        name="tune-small",
        namespace="default",
        preset="smollm2-135m-instruct",
        method="lora",
        image="model-server-cpu:latest",
        hf_model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        gpus_per_node=1,
        match_labels={"apps": "tuning"},
        input_urls=("http://10.229.254.1:8080/a.jsonl",),
        output_image="10.229.254.1:5000/adapters/kiwi:1",
        output_push_secret="push-secret",
        weights_image="10.229.254.1:5000/kaitopy/weights/smollm2-135m-instruct:0.1.2",
        weights_plain_http=True,
        cpu=CpuPlan("1", "2", "1280Mi", "2560Mi"),
        push_plain_http=True,
        allowed_networks=("10.229.254.1/32",),
    )
    containers = _kaitopy_containers(tuning_job(plan))
    assert [c["name"] for c in containers] == ["fetch-data", "weights", "train", "push"]
    fetch = _parser().parse_args(containers[0]["args"][1:])
    assert fetch.allow_network == ["10.229.254.1/32"]
    assert _parser().parse_args(containers[3]["args"][1:]).plain_http
    from kaitopy.weights import command as weights_command

    weights_parser = argparse.ArgumentParser(prog="kaitopy weights")
    weights_command.add_arguments(weights_parser)
    pull = weights_parser.parse_args(containers[1]["args"][1:])
    assert pull.image == plan.weights_image


@pytest.mark.parametrize(
    ("cidr", "why"),
    [
        ("10.229.254.1/32", None),
        ("10.0.0.0/8", None),
        ("169.254.0.0/15", "link-local"),
        ("0.0.0.0/0", "the unspecified range"),
        ("127.0.0.1/32", "loopback"),
        ("168.63.0.0/16", "WireServer"),
        ("10.0.0.1/8", "not a network"),
        ("fe80::/64", "link-local"),
    ],
)
def test_allowed_networks_never_open_metadata_or_loopback(cidr: str, why: str | None) -> None:
    from kaitopy.ssrf.addresses import allowed_network

    if why is None:
        assert str(allowed_network(cidr)) == cidr
    else:
        with pytest.raises(ValueError, match=why):
            allowed_network(cidr)
