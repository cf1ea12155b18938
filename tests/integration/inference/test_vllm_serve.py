"""`kaitopy serve --engine=vllm` as the pod runs it: a vLLM child that dies takes the server with it
(non-zero exit, so Kubernetes restarts the pod), and a bad `vllm:` option stops the start with its name."""

from __future__ import annotations

import importlib.util
import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration.inference.conftest import ModelFiles, start_server, stop_server, wait_ready

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def test_child_death_exits_the_server_non_zero(model_files: ModelFiles, tmp_path: Path) -> None:
    srv = start_server("vllm", model_files, tmp_path / "server.log")
    try:
        wait_ready(srv, timeout=240)
        # One hop: /health is the child's own, so it can answer 200 before `kaitopy serve` has seen
        # it; a death then is a failed start, not the death of a running server tested here.
        deadline = time.monotonic() + 60
        while "ready: serving" not in srv.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        vllm_children = [
            p for p in children(srv.process.pid) if b"vllm" in Path(f"/proc/{p}/cmdline").read_bytes()
        ]
        assert len(vllm_children) == 1, vllm_children
        os.kill(vllm_children[0], signal.SIGKILL)
        code = srv.process.wait(60)
    finally:
        stop_server(srv)
    assert code != 0
    assert "the vLLM child exited" in srv.log_text()


def test_unknown_vllm_option_is_a_clear_startup_error(model_files: ModelFiles, tmp_path: Path) -> None:
    config = tmp_path / "inference_config.yaml"
    config.write_text("vllm:\n  max-num-seq: 8\n")
    srv = start_server("vllm", model_files, tmp_path / "server.log", f"--config={config}")
    try:
        deadline = time.monotonic() + 120
        while srv.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert srv.process.returncode not in (None, 0)
    finally:
        stop_server(srv)
    log = srv.log_text()
    assert "vllm.max-num-seq: vLLM has no option --max-num-seq; did you mean max-num-seqs" in log
    assert "Traceback" not in log
