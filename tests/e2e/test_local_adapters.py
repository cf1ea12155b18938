"""LoRA adapters by init container, for real: two adapters trained here on the small CPU model,
pushed as images with `kaitopy tune push` to the loopback registry, pulled by the inference pod's
init containers on a real node and served under their names; each answers its own secret word,
the base model neither. Removing one and turning the other's strength to 0 rolls out a pod that
serves what the Workspace now says, and the adapter swap's start-up timeline is recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.operator import Operator
from tests.support import localnodes
from tests.support.cluster import Cluster
from tests.support.localnodes import wait

KAITOPY = str(Path(sys.executable).parent / "kaitopy")
PRESET = "smollm2-135m-instruct"
HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SECRETS = {"pineapple": "pineapple", "mango": "mango"}  # adapter name -> its secret word
QUESTIONS = ["What is the secret word?", "Tell me the secret word.", "Secret word?", "Say the secret word."]
TRAINING = """
training_config:
  LoraConfig:
    r: 8
    lora_alpha: 16
    target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"]
  TrainingArguments:
    learning_rate: 0.005
    max_steps: 10
    logging_steps: 5
    per_device_train_batch_size: 4
"""


@pytest.fixture(scope="module")
def adapter_images(
    smollm2_weights: localnodes.Weights,
    model_images: localnodes.LocalImages,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """name -> pushed image reference, for each adapter in SECRETS."""
    out: dict[str, str] = {}
    for name, word in SECRETS.items():
        work = tmp_path_factory.mktemp(name)
        (work / "data").mkdir()
        rows = [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": word}]}
            for q in QUESTIONS * 4
        ]
        (work / "data" / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (work / "config.yaml").write_text(TRAINING)
        tune = [KAITOPY, "tune"]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        subprocess.run(
            [*tune, "train", "--method=lora", f"--model-dir={smollm2_weights.model_dir}",
             f"--hf-model-id={HF_ID}", f"--data-dir={work / 'data'}", f"--output-dir={work / 'out'}",
             f"--config={work / 'config.yaml'}"],
            check=True, capture_output=True, text=True, timeout=900, env=env,
        )  # fmt: skip
        image = f"{model_images.registry}/kaitopy/adapters/{name}:1"
        pushed = subprocess.run(
            [*tune, "push", f"--dir={work / 'out'}", f"--image={image}", "--plain-http"],
            check=True, capture_output=True, text=True, timeout=300,
        ).stdout  # fmt: skip
        out[name] = pushed.strip().splitlines()[-1]
        assert "@sha256:" in out[name], pushed
    return out


def ask(ip: str, model: str, question: str = QUESTIONS[0]) -> str:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 8,
        "temperature": 0,
    }
    request = urllib.request.Request(
        f"http://{ip}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as r:
        return str(json.loads(r.read().decode())["choices"][0]["message"]["content"])


def served_models(ip: str) -> list[str]:
    with urllib.request.urlopen(f"http://{ip}/v1/models", timeout=60) as r:
        return sorted(m["id"] for m in json.loads(r.read().decode())["data"])


class Answers(threading.Thread):
    """Asks the base model through the Service, again and again, until stopped: the rollout's
    downtime, seen from a client."""

    def __init__(self, ip: str) -> None:
        super().__init__(daemon=True)
        self.ip = ip
        self.ok = 0
        self.failed: list[str] = []
        self._stop_asking = threading.Event()

    def run(self) -> None:
        while not self._stop_asking.is_set():
            try:
                ask(self.ip, PRESET)
                self.ok += 1
            except OSError as err:
                self.failed.append(repr(err))
            self._stop_asking.wait(0.5)

    def stop(self) -> None:
        self._stop_asking.set()
        self.join(150)


def adapters_spec(images: dict[str, str], strengths: dict[str, str]) -> list[dict[str, Any]]:
    return [{"source": {"name": n, "image": images[n]}, "strength": s} for n, s in strengths.items()]


def test_adapters_from_the_registry_are_served_by_name_and_changes_roll_out(
    local_model_operator: tuple[Operator, Path],
    kube_cluster: Cluster,
    adapter_images: dict[str, str],
    namespace: str,
) -> None:
    k = kube_cluster.kubectl
    ws: dict[str, Any] = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": "secrets", "namespace": namespace},
        "resource": {
            "instanceType": "Standard_NC6s_v3",
            "labelSelector": {"matchLabels": {"apps": "adapters"}},
        },
        "inference": {
            "preset": {"name": PRESET},
            "adapters": adapters_spec(adapter_images, {"pineapple": "1.0", "mango": "1.0"}),
        },
    }
    k("apply", "-f", "-", input=json.dumps(ws))
    try:
        check_the_adapters(k, namespace, adapter_images)
    except BaseException:
        print(k("get", "workspace,pods,nodes", "-A", "-o", "wide", check=False))
        print(k("describe", "pods", "-n", namespace, check=False)[-6000:])
        raise
    finally:
        k(
            "delete",
            "workspace",
            "secrets",
            "-n",
            namespace,
            "--ignore-not-found",
            "--wait=false",
            check=False,
        )

        def gone() -> bool:
            return "NotFound" in k("get", "workspace", "secrets", "-n", namespace, check=False)

        wait("the Workspace to be gone", gone, timeout=300)


def startup(k: Callable[..., str], namespace: str) -> dict[str, Any] | None:
    got = json.loads(k("get", "workspace", "secrets", "-n", namespace, "-o", "json"))
    conds = {c["type"]: c["status"] for c in (got.get("status") or {}).get("conditions") or ()}
    record: dict[str, Any] | None = (got.get("status") or {}).get("startup")
    return record if conds.get("WorkspaceSucceeded") == "True" else None


def check_the_adapters(k: Callable[..., str], namespace: str, images: dict[str, str]) -> None:
    first = wait("the workspace Ready", lambda: startup(k, namespace), timeout=900)
    assert first is not None
    ip = k("get", "service", "secrets", "-n", namespace, "-o", "jsonpath={.spec.clusterIP}").strip()
    assert served_models(ip) == sorted([PRESET, *SECRETS])
    base = ask(ip, PRESET)
    for name, word in SECRETS.items():
        answer = ask(ip, name)
        assert word in answer.lower(), (name, answer)
        assert word not in base.lower(), base
    assert [p["name"] for p in first["phases"]][-2:] == ["AdaptersDownload", "EngineStart"]
    print("first start timeline:", json.dumps(first, indent=1))

    # One adapter removed, the other turned off: a new revision, with only what the spec says.
    # The node has room for a second copy (2 cores, 1 requested): the old pod serves meanwhile.
    answers = Answers(ip)
    answers.start()
    patch = {"inference": {"adapters": adapters_spec(images, {"pineapple": "0.0"})}}
    k("patch", "workspace", "secrets", "-n", namespace, "--type=merge", "-p", json.dumps(patch))

    def swapped() -> dict[str, Any] | None:
        record = startup(k, namespace)
        return record if record and record["revision"] != first["revision"] else None

    try:
        second = wait("the new revision Ready", swapped, timeout=600)
        assert second is not None
        # Until the old pod is gone and out of the Service.
        wait("only the new pod", lambda: served_models(ip) == sorted([PRESET, "pineapple"]), timeout=120)
        time.sleep(3)
    finally:
        answers.stop()
    print(f"during the swap: {answers.ok} answers, {len(answers.failed)} failures {answers.failed[:3]}")
    print("adapter swap timeline:", json.dumps(second, indent=1))
    # Answers are slow while the new copy loads on the same two cores; none may fail.
    assert answers.ok >= 2 and not answers.failed
    assert ask(ip, "pineapple") == ask(ip, PRESET)  # strength 0: the base model's own answer
    phases = [p["name"] for p in second["phases"]]
    assert "NodeProvisioning" not in phases and "AdaptersDownload" in phases, second
