from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from kaitopy.cli import main
from kaitopy.inference import cli
from kaitopy.inference.settings import (
    SettingsError,
    node_rank_from_pod_name,
    parse_config_text,
    parse_strength,
    parse_strengths,
    role_of,
    watched_peers,
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(["--model-dir=/weights", *argv])


def test_config_sections_and_max_model_len() -> None:
    config = parse_config_text(
        "max_model_len: 4096\n"
        "vllm:\n  gpu-memory-utilization: 0.9\n"
        "transformers:\n  trust_remote_code: true\n"
    )
    assert config.max_model_len == 4096
    assert config.vllm == {"gpu-memory-utilization": 0.9}
    assert config.transformers == {"trust_remote_code": True}


def test_config_takes_kaitos_vllm_max_model_len() -> None:
    config = parse_config_text("vllm:\n  max-model-len: 2048\n  swap-space: 4\nmax_probe_steps: 6\n")
    assert config.max_model_len == 2048
    assert config.vllm["swap-space"] == 4


def test_empty_config_is_the_defaults() -> None:
    config = parse_config_text("")
    assert (config.max_model_len, config.vllm, config.transformers) == (None, {}, {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_tokenz: 5\n", "unknown key(s) max_tokenz"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("vllm: [1, 2]\n", "vllm must be a mapping"),
        ("max_model_len: -3\n", "max_model_len must be a positive integer"),
        ("max_model_len: true\n", "max_model_len must be a positive integer"),
        ("vllm:\n  max-model-len: lots\n", "vllm.max-model-len must be a positive integer"),
        ("vllm: {\n", "not valid YAML"),
    ],
)
def test_bad_configs_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config_text(text)


def test_strengths() -> None:
    assert parse_strength("my-adapter=0.5") == ("my-adapter", 0.5)
    assert parse_strength("a=b=2") == ("a=b", 2.0)
    assert parse_strengths(["x=1", "y=0"]) == {"x": 1.0, "y": 0.0}


@pytest.mark.parametrize("text", ["novalue", "=1", "x=", "x=abc", "x=-1", "x=inf", "x=nan"])
def test_bad_strengths(text: str) -> None:
    with pytest.raises(SettingsError, match="--adapter-strength"):
        parse_strength(text)


def test_strength_given_twice() -> None:
    with pytest.raises(SettingsError, match="twice"):
        parse_strengths(["x=1", "x=2"])


def test_node_rank_and_role_from_pod_name() -> None:
    assert node_rank_from_pod_name("ws-0") == 0
    assert node_rank_from_pod_name("my-ws-12") == 12
    assert role_of(0) == "leader"
    assert role_of(12) == "worker"
    with pytest.raises(SettingsError):
        node_rank_from_pod_name("ws-abc")
    with pytest.raises(SettingsError):
        node_rank_from_pod_name(None)


def test_controller_flags_parse() -> None:
    # Exactly what the Workspace controller passes (workload.server_args), empty values included.
    args = parse(
        "--engine=transformers",
        "--hf-model-id=",
        "--served-model-name=phi-3",
        "--dtype=",
        "--tensor-parallel-size=1",
        "--pipeline-parallel-size=1",
        "--adapter-dir=/adapters",
        "--port=5000",
        "--host=0.0.0.0",
        "--max-model-len=4096",
        "--tool-call-parser=hermes",
        "--reasoning-parser=deepseek_r1",
        "--adapter-strength=a=0.5",
        "--adapter-strength=b=2",
    )
    settings = cli.settings_from_args(args)
    assert settings.dtype == "auto"
    assert settings.hf_model_id is None
    assert settings.served_model_name == "phi-3"
    assert settings.max_model_len == 4096
    assert settings.adapter_strengths == {"a": 0.5, "b": 2.0}
    assert settings.adapter_dir == Path("/adapters")
    assert settings.tool_call_parser == "hermes"
    assert settings.max_concurrency == 1
    assert settings.role == "single"


def test_multi_node_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "ws-1")
    settings = cli.settings_from_args(
        parse(
            "--engine=vllm", "--role-from-pod-name", "--leader-address=ws-0.ws-headless.ns.svc.cluster.local"
        )
    )
    assert settings.role == "worker"
    assert settings.node_rank == 1
    assert settings.leader_address == "ws-0.ws-headless.ns.svc.cluster.local"
    assert settings.leader_port == 29501  # vLLM's own default
    assert settings.max_concurrency == 256  # vLLM batches


def test_group_peers_and_who_watches_whom(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "ws-2")
    peers = ("http://ws-0.h:5000", "http://ws-1.h:5000", "http://ws-2.h:5000")
    settings = cli.settings_from_args(
        parse(
            "--engine=vllm",
            "--role-from-pod-name",
            "--leader-address=ws-0.h",
            "--leader-port=29600",
            *(f"--group-peer={p}/" for p in peers),
        )
    )
    assert settings.group_peers == peers and settings.leader_port == 29600
    assert watched_peers(settings.group_peers, settings.node_rank) == ["http://ws-0.h:5000"]
    assert watched_peers(peers, 0) == ["http://ws-1.h:5000", "http://ws-2.h:5000"]
    assert watched_peers((), 0) == []


def test_config_file_sets_max_model_len_unless_the_flag_does(tmp_path: Path) -> None:
    config = tmp_path / "inference_config.yaml"
    config.write_text("max_model_len: 1024\nvllm:\n  enforce-eager: true\n")
    settings = cli.settings_from_args(parse(f"--config={config}"))
    assert settings.max_model_len == 1024
    assert settings.config.vllm == {"enforce-eager": True}
    assert cli.settings_from_args(parse(f"--config={config}", "--max-model-len=300")).max_model_len == 300


def test_served_name_defaults_to_the_model_id() -> None:
    assert cli.settings_from_args(parse("--hf-model-id=org/model")).served_model_name == "org/model"
    assert cli.settings_from_args(parse()).served_model_name == "weights"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dtype=int4"], "--dtype"),
        (["--max-concurrency=0"], "--max-concurrency"),
        (["--max-queue=-1"], "--max-queue"),
        (["--port=70000"], "--port"),
        (["--config=/no/such/file.yaml"], "cannot read it"),
        (["--role-from-pod-name"], "POD_NAME"),
        (["--leader-port=0"], "--leader-port"),
        (["--group-peer=ws-0:5000"], "expected http://host:port"),
    ],
)
def test_bad_flags(argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAME", raising=False)
    with pytest.raises(SettingsError, match=message):
        cli.settings_from_args(parse(*argv))


def test_serve_is_a_kaitopy_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--engine", "--model-dir", "--adapter-strength", "--max-queue", "--role-from-pod-name"):
        assert flag in out


def test_bad_settings_exit_2_without_loading(tmp_path: Path) -> None:
    assert main(["serve", f"--model-dir={tmp_path}", "--dtype=int4"]) == 2
