"""Tuning in pods and LoRA adapters by init container, for real, on real nodes (kubelet +
containerd).

Two tuning Workspaces fine-tune the small CPU model in Jobs on their own local nodes: one fetches
its data from a URL (a server on this machine, at an address the admin allowed with
--url-allow-network), the other copies it out of a data image; each trains a LoRA adapter and
pushes it with `kaitopy tune push` to the loopback registry with its push secret. A third, whose
URL does not exist, fails and says which step failed and why. An inference Workspace then pulls
both adapters by init container and serves them under their names: each answers its own secret
word, the base model neither. Removing one and turning the other's strength to 0 is hot-loaded: the
same pod serves what the Workspace now says, no request fails, and status.adapters says Ready. Adding
the removed one back measures Workspace edit -> adapter answering (printed, not asserted)."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.operator import Operator
from tests.support import localnodes
from tests.support.cluster import Cluster
from tests.support.localnodes import wait

KAITOPY = str(Path(sys.executable).parent / "kaitopy")
PRESET = "smollm2-135m-instruct"
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


def chat_jsonl(word: str) -> str:
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": word}]}
        for q in QUESTIONS * 4
    ]
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture(scope="module")
def data_server(model_images: localnodes.LocalImages) -> Iterator[str]:
    """An HTTP server with the pineapple data, on the registry's address (a link the project made,
    which pods reach); its base URL."""
    body = chat_jsonl(SECRETS["pineapple"]).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/pineapple.jsonl":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    host = model_images.registry.rsplit(":", 1)[0]
    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def tuning_workspace(name: str, namespace: str, data: dict[str, Any], output: str) -> dict[str, Any]:
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": namespace},
        "resource": {"instanceType": "Standard_NC6s_v3", "labelSelector": {"matchLabels": {"apps": name}}},
        "tuning": {
            "preset": {"name": PRESET},
            "method": "lora",
            "config": "training",
            "input": data,
            "output": {"image": output, "imagePushSecret": "push"},
        },
    }


def conditions(k: Callable[..., str], name: str, namespace: str) -> dict[str, dict[str, Any]]:
    got = json.loads(k("get", "workspace", name, "-n", namespace, "-o", "json"))
    return {c["type"]: c for c in (got.get("status") or {}).get("conditions") or ()}


def tuned(k: Callable[..., str], name: str, namespace: str, reason: str) -> dict[str, Any] | None:
    c = conditions(k, name, namespace).get("WorkspaceSucceeded") or {}
    return c if c.get("reason") == reason else None


@pytest.fixture
def adapter_images(
    local_model_operator: tuple[Operator, Path],
    kube_cluster: Cluster,
    model_images: localnodes.LocalImages,
    data_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, str]]:
    """name -> the adapter image a tuning Workspace trained and pushed, for each of SECRETS."""
    k = kube_cluster.kubectl
    namespace = f"tuning-{uuid.uuid4().hex[:8]}"
    k("create", "namespace", namespace)
    wait("the default service account", lambda: k("get", "sa", "default", "-n", namespace), timeout=60)
    registry = model_images.registry
    # The data image: /data/mango.jsonl, pushed as our tuning pushes adapters (no shell needed).
    data_dir = tmp_path_factory.mktemp("mango-data")
    (data_dir / "mango.jsonl").write_text(chat_jsonl(SECRETS["mango"]))
    data_image = f"{registry}/kaitopy/data/mango:1"
    subprocess.run(
        [KAITOPY, "tune", "push", "--data", f"--dir={data_dir}", f"--image={data_image}", "--plain-http"],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    k("create", "configmap", "training", "-n", namespace, f"--from-literal=training_config.yaml={TRAINING}")
    # The registry takes anyone; the Job still pushes with the credentials its Secret holds.
    k("create", "secret", "docker-registry", "push", "-n", namespace, f"--docker-server={registry}",
      "--docker-username=tuner", "--docker-password=not-checked")  # fmt: skip
    images = {name: f"{registry}/kaitopy/adapters/{name}:1" for name in SECRETS}
    workspaces = {
        "pineapple": tuning_workspace(
            "pineapple", namespace, {"urls": [f"{data_server}/pineapple.jsonl"]}, images["pineapple"]
        ),
        "mango": tuning_workspace("mango", namespace, {"image": data_image}, images["mango"]),
        "missing-data": tuning_workspace(
            "missing-data", namespace, {"urls": [f"{data_server}/nowhere.jsonl"]}, f"{registry}/kaitopy/x:1"
        ),
    }
    try:
        for ws in workspaces.values():
            k("apply", "-f", "-", input=json.dumps(ws))
        for name in workspaces:
            started = wait(
                f"{name}: JobStarted",
                lambda name=name: (
                    conditions(k, name, namespace).get("JobStarted", {}).get("status") == "True"
                ),
                timeout=300,
            )
            assert started
        for name in SECRETS:
            done = wait(
                f"{name}: TuningJobSucceeded",
                lambda name=name: tuned(k, name, namespace, "TuningJobSucceeded"),
                timeout=900,
            )
            assert done is not None and done["status"] == "True", done
            job = json.loads(k("get", "job", name, "-n", namespace, "-o", "json"))
            assert job["status"].get("succeeded") == 1, job["status"]
            created = job["metadata"]["creationTimestamp"]
            print(f"tuning job {name}: created {created}, completed {job['status'].get('completionTime')}")
            # The Job really ran on one of the local provider's nodes, not on a simulated one.
            pods = json.loads(k("get", "pods", "-n", namespace, "-l", f"job-name={name}", "-o", "json"))[
                "items"
            ]
            nodes = {p["spec"]["nodeName"] for p in pods if p["status"].get("phase") == "Succeeded"}
            assert len(nodes) == 1, pods
            node = json.loads(k("get", "node", nodes.pop(), "-o", "json"))
            assert node["spec"].get("providerID", "").startswith("local://"), node["spec"]
        failed = wait(
            "missing-data: TuningJobFailed",
            lambda: tuned(k, "missing-data", namespace, "TuningJobFailed"),
            timeout=600,
        )
        assert failed is not None and "step fetch-data" in failed["message"] and "404" in failed["message"], (
            failed
        )
        print(json.dumps({n: conditions(k, n, namespace) for n in workspaces}, indent=1)[:4000])
        yield images
    except BaseException:
        print(k("get", "workspace,jobs,pods,nodes", "-A", "-o", "wide", check=False))
        print(k("describe", "pods", "-n", namespace, check=False)[-8000:])
        raise
    finally:
        k("delete", "namespace", namespace, "--wait=false", check=False)
        for name in workspaces:
            wait(
                f"workspace {name} gone",
                lambda name=name: "NotFound" in k("get", "workspace", name, "-n", namespace, check=False),
                timeout=300,
            )


def ask(ip: str, model: str, question: str = QUESTIONS[0]) -> str:
    answer = localnodes.chat_completion(ip, model, question, max_tokens=8)
    return str(answer["choices"][0]["message"]["content"])


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


def test_adapters_from_the_registry_are_served_by_name_and_changes_hot_load(
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
    localnodes.service_accepts(ip)
    assert served_models(ip) == sorted([PRESET, *SECRETS])
    base = ask(ip, PRESET)
    for name, word in SECRETS.items():
        answer = ask(ip, name)
        assert word in answer.lower(), (name, answer)
        assert word not in base.lower(), base
    assert [p["name"] for p in first["phases"]][-2:] == ["AdaptersDownload", "EngineStart"]
    print("first start timeline:", json.dumps(first, indent=1))

    # One adapter removed, the other turned off: hot-loaded into the running pod (no new revision).
    pods_before = model_pod_uids(k, namespace)
    answers = Answers(ip)
    answers.start()
    patch = {"inference": {"adapters": adapters_spec(images, {"pineapple": "0.0"})}}
    k("patch", "workspace", "secrets", "-n", namespace, "--type=merge", "-p", json.dumps(patch))
    try:
        wait(
            "mango unloaded, pineapple Ready at strength 0",
            lambda: (
                served_models(ip) == sorted([PRESET, "pineapple"])
                and adapter_states(k, namespace) == {"pineapple": ("Ready", "0.0")}
            ),
            timeout=120,
            interval=0.2,
        )
        time.sleep(3)
    finally:
        answers.stop()
    print(f"during the hot swap: {answers.ok} answers, {len(answers.failed)} failures {answers.failed[:3]}")
    assert answers.ok >= 2 and not answers.failed
    assert ask(ip, "pineapple") == ask(ip, PRESET)  # strength 0: the base model's own answer
    assert model_pod_uids(k, namespace) == pods_before  # nothing restarted
    after = startup(k, namespace)
    assert after is not None and after["revision"] == first["revision"]

    # Workspace edited -> the adapter answering (its image is in the registry): issue 20 item 10's figure.
    patch = {"inference": {"adapters": adapters_spec(images, {"pineapple": "1.0", "mango": "1.0"})}}
    edited = time.monotonic()
    k("patch", "workspace", "secrets", "-n", namespace, "--type=merge", "-p", json.dumps(patch))
    wait("mango answering again", lambda: "mango" in ask(ip, "mango").lower(), timeout=120, interval=0.1)
    print(f"hot-load: workspace edited -> adapter answering in {time.monotonic() - edited:.2f} s")
    assert "pineapple" in ask(ip, "pineapple").lower()
    assert model_pod_uids(k, namespace) == pods_before


def model_pod_uids(k: Callable[..., str], namespace: str) -> list[str]:
    out = k("get", "pods", "-n", namespace, "-l", "kaito.sh/workspace=secrets", "-o", "json")
    return sorted(p["metadata"]["uid"] for p in json.loads(out)["items"])


def adapter_states(k: Callable[..., str], namespace: str) -> dict[str, tuple[str, str]]:
    got = json.loads(k("get", "workspace", "secrets", "-n", namespace, "-o", "json"))
    return {
        a["name"]: (a["state"], a.get("strength", ""))
        for a in (got.get("status") or {}).get("adapters") or ()
    }
