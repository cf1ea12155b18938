"""`kaitopy serve` end to end: a server process with the tiny model, driven by the official openai
client and by plain HTTP (Kaito's /chat, error cases, /metrics)."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.inference.conftest import (
    ADAPTER,
    ADAPTER_HALF,
    ADAPTER_OFF,
    BAD_ADAPTERS,
    BASE,
    ModelFiles,
    Server,
    start_server,
    stop_server,
    wait_ready,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

MESSAGES = [{"role": "user", "content": "hello world what is the sky"}]
PROMPT = "tell me about the red sun and the blue sea"


def client(server: Server) -> openai.OpenAI:
    # No retries: a 429 must reach the test, not be retried away.
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def post(server: Server, path: str, data: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
    request = urllib.request.Request(
        f"{server.url}{path}", data=data, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read()), _lowered(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), _lowered(err.headers)


def _lowered(headers: Any) -> dict[str, str]:
    # Header names are case-insensitive; uvicorn (the vLLM engine's server) sends them lowercase.
    return {k.lower(): v for k, v in headers.items()}


def metrics(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(condition: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def running(server: Server) -> float:
    return sample(metrics(server), "kaitopy_inference_running_requests")


@cache
def reference_generate(
    model_dir: str, adapter_dir: str | None, max_new_tokens: int, strength: float = 1.0
) -> str:
    """Greedy text straight from transformers (and peft), outside the server. A strength other than 1
    goes through peft's own weighted-adapter merge, not the server's way of scaling."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir, adapter_name="given")
        if strength != 1.0:
            model.add_weighted_adapter(["given"], [strength], "weighted", combination_type="linear")
            model.set_adapter("weighted")
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.eval().generate(input_ids=ids, do_sample=False, max_new_tokens=max_new_tokens)
    generated: str = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    return generated


def chat_text(server: Server, model: str, max_tokens: int = 12) -> str:
    response = client(server).chat.completions.create(
        model=model,
        messages=MESSAGES,
        max_tokens=max_tokens,
        temperature=0,  # type: ignore[arg-type]
    )
    return response.choices[0].message.content or ""


def test_health_is_503_while_loading_then_200(server: Server) -> None:
    assert 503 in server.health_seen, server.health_seen
    first_ok = server.health_seen.index(200)
    assert all(s == 503 for s in server.health_seen[:first_ok])


def test_models_lists_base_then_adapters(server: Server) -> None:
    ids = [m.id for m in client(server).models.list().data]
    assert ids[0] == BASE
    assert sorted(ids[1:]) == sorted([ADAPTER, ADAPTER_HALF, ADAPTER_OFF])


def test_malformed_adapters_are_skipped_and_logged(server: Server) -> None:
    log = server.log_text()
    for name in BAD_ADAPTERS:
        assert any(name in line and "skipped" in line for line in log.splitlines()), (name, log)
    assert "not-an-adapter" not in log
    assert server.process.poll() is None


def test_chat_stream_joins_to_the_same_text(server: Server) -> None:
    c = client(server)
    whole = c.chat.completions.create(
        model=BASE,
        messages=MESSAGES,
        max_tokens=12,
        temperature=0,  # type: ignore[arg-type]
    )
    text = whole.choices[0].message.content or ""
    assert text.strip()
    assert whole.usage is not None and whole.usage.completion_tokens >= 1
    assert whole.choices[0].finish_reason in ("stop", "length")
    stream = c.chat.completions.create(
        model=BASE,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    assert len(chunks) > 2
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(ch.usage is None for ch in chunks)  # the client did not ask for usage


def test_stream_usage_when_asked(server: Server) -> None:
    chunks = list(
        client(server).completions.create(
            model=BASE,
            prompt=PROMPT,
            max_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 5
    assert chunks[-1].choices == []


def test_completion_counts_prompt_tokens(server: Server, model_files: ModelFiles) -> None:
    from transformers import AutoTokenizer

    expected = len(AutoTokenizer.from_pretrained(model_files.model)(PROMPT)["input_ids"])
    response = client(server).completions.create(
        model=BASE, prompt=PROMPT, max_tokens=7, temperature=0, extra_body={"ignore_eos": True}
    )
    assert response.usage is not None
    assert response.usage.prompt_tokens == expected
    assert response.usage.completion_tokens == 7
    assert response.choices[0].finish_reason == "length"
    assert response.choices[0].text.strip()


def test_stop_sequence_cuts_the_text(server: Server) -> None:
    c = client(server)
    full = c.completions.create(
        model=BASE, prompt=PROMPT, max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
    )
    words = full.choices[0].text.split()
    assert len(words) >= 4
    stop = words[3]
    cut = c.completions.create(
        model=BASE, prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop], extra_body={"ignore_eos": True}
    )
    text = cut.choices[0].text
    assert stop not in text
    assert full.choices[0].text.startswith(text)
    assert cut.choices[0].finish_reason == "stop"


def test_adapter_changes_output_and_matches_peft(server: Server, model_files: ModelFiles) -> None:
    base = chat_text(server, BASE)
    adapted = chat_text(server, ADAPTER)
    assert adapted != base
    model_dir = str(model_files.model)
    assert base.strip() == reference_generate(model_dir, None, 12).strip()
    assert adapted.strip() == reference_generate(model_dir, str(model_files.adapters / ADAPTER), 12).strip()


def test_adapter_at_strength_zero_is_the_base(server: Server) -> None:
    assert chat_text(server, ADAPTER_OFF) == chat_text(server, BASE)


def test_adapter_strength_scales_like_peft(server: Server, model_files: ModelFiles) -> None:
    half = chat_text(server, ADAPTER_HALF)
    assert half not in (chat_text(server, BASE), chat_text(server, ADAPTER))
    expected = reference_generate(str(model_files.model), str(model_files.adapters / ADAPTER), 12, 0.5)
    assert half.strip() == expected.strip()


def test_seeded_sampling_repeats(server: Server) -> None:
    c = client(server)

    def sampled(seed: int) -> str:
        r = c.completions.create(model=BASE, prompt=PROMPT, max_tokens=10, temperature=1.0, seed=seed)
        return r.choices[0].text

    assert sampled(7) == sampled(7)


def test_kaito_chat_with_a_prompt(server: Server) -> None:
    status, body, _ = post(
        server, "/chat", json.dumps({"prompt": PROMPT, "generate_kwargs": {"max_length": 50}}).encode()
    )
    assert status == 200, body
    assert isinstance(body["Result"], str)
    assert body["Result"].startswith(PROMPT)
    assert len(body["Result"]) > len(PROMPT)


def test_kaito_chat_greedy_matches_openai(server: Server) -> None:
    payload = {"prompt": PROMPT, "generate_kwargs": {"max_new_tokens": 6, "do_sample": False}}
    status, body, _ = post(server, "/chat", json.dumps(payload).encode())
    assert status == 200, body
    completion = client(server).completions.create(model=BASE, prompt=PROMPT, max_tokens=6, temperature=0)
    assert body["Result"] == PROMPT + completion.choices[0].text

    payload = {"messages": MESSAGES, "generate_kwargs": {"max_new_tokens": 12, "do_sample": False}}
    status, body, _ = post(server, "/chat", json.dumps(payload).encode())
    assert status == 200, body
    assert body["Result"] == chat_text(server, BASE)


def test_kaito_chat_max_length_counts_the_prompt(server: Server) -> None:
    # max_length is prompt plus output: one more than the prompt leaves room for exactly one token.
    prompt_tokens = client(server).completions.create(model=BASE, prompt=PROMPT, max_tokens=1).usage
    assert prompt_tokens is not None
    payload = {
        "prompt": PROMPT,
        "generate_kwargs": {"max_length": prompt_tokens.prompt_tokens, "do_sample": False},
    }
    status, body, _ = post(server, "/chat", json.dumps(payload).encode())
    assert status == 400, body
    assert body["error"]["param"] == "max_length"


def test_metrics_count_requests_and_tokens(server: Server) -> None:
    before = metrics(server)
    c = client(server)
    r1 = c.chat.completions.create(
        model=BASE,
        messages=MESSAGES,
        max_tokens=4,
        temperature=0,  # type: ignore[arg-type]
    )
    r2 = c.chat.completions.create(
        model=ADAPTER,
        messages=MESSAGES,
        max_tokens=4,
        temperature=0,  # type: ignore[arg-type]
    )
    list(
        c.chat.completions.create(
            model=BASE,
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=3,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=MESSAGES)  # type: ignore[arg-type]
    after = metrics(server)

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    chat = "/v1/chat/completions"
    assert grew("kaitopy_inference_requests_total", endpoint=chat, model=BASE, status="200") == 2
    assert grew("kaitopy_inference_requests_total", endpoint=chat, model=ADAPTER, status="200") == 1
    assert grew("kaitopy_inference_requests_total", endpoint=chat, model="unknown", status="404") == 1
    assert r1.usage is not None and r2.usage is not None
    assert grew("kaitopy_inference_completion_tokens_total", model=BASE) == r1.usage.completion_tokens + 3
    assert grew("kaitopy_inference_prompt_tokens_total", model=ADAPTER) == r2.usage.prompt_tokens
    assert grew("kaitopy_inference_request_duration_seconds_count", endpoint=chat) == 4
    assert grew("kaitopy_inference_time_to_first_token_seconds_count", endpoint=chat) == 1
    assert sample(after, "kaitopy_inference_queue_depth") == 0


@pytest.mark.parametrize(
    ("data", "status", "param", "code"),
    [
        (b"{not json", 400, None, None),
        (b"[1, 2]", 400, None, None),
        (b'{"model": "tiny"}', 400, "messages", None),
        (b'{"model": "tiny", "messages": "hi"}', 400, "messages", None),
        (
            b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
            400,
            "temperature",
            None,
        ),
        (
            b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}',
            400,
            "messages",
            "context_length_exceeded",
        ),
        (
            b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}',
            400,
            "max_tokens",
            "max_tokens_exceeded",
        ),
        (
            b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}',
            404,
            "model",
            "model_not_found",
        ),
        (b'{"model": 5, "messages": [{"role": "user", "content": "hi"}]}', 400, "model", None),
        (b'{"model": "tiny", "messages": ' + b"[" * 50 + b"]" * 50 + b"}", 400, None, None),
    ],
)
def test_bad_chat_requests_get_openai_errors(
    server: Server, data: bytes, status: int, param: str | None, code: str | None
) -> None:
    # The same body from both engines: only the message may be worded by the engine.
    got, body, _ = post(server, "/v1/chat/completions", data)
    assert got == status, body
    assert body == {
        "error": {
            "message": body["error"]["message"],
            "type": "invalid_request_error",
            "param": param,
            "code": code,
        }
    }
    assert body["error"]["message"]


def test_openai_client_sees_4xx(server: Server) -> None:
    c = client(server)
    with pytest.raises(openai.NotFoundError) as not_found:
        c.completions.create(model="nope", prompt="hi", max_tokens=2)
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        c.completions.create(model=BASE, prompt="the " * 600, max_tokens=2)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(
            model=BASE,
            messages=[{"role": "user", "content": "the " * 600}],
            max_tokens=2,
        )


@pytest.mark.parametrize(
    ("path", "data", "status"),
    [
        ("/chat", b"{nope", 400),
        ("/chat", b'{"generate_kwargs": {}}', 400),
        ("/chat", b'{"prompt": "hi", "generate_kwargs": "max_length=5"}', 400),
        ("/chat", b'{"prompt": "hi", "generate_kwargs": {"max_length": -1}}', 400),
        ("/v1/completions", b'{"model": "tiny", "prompt": {"x": 1}}', 400),
        ("/v1/nothing", b"{}", 404),
    ],
)
def test_bad_requests_elsewhere(server: Server, path: str, data: bytes, status: int) -> None:
    got, body, _ = post(server, path, data)
    assert got == status, body
    assert body["error"]["message"]


def long_generation(server: Server) -> dict[str, Any]:
    """Extra request fields for a generation that runs for seconds. 480 tokens is as long as the
    tiny model's context allows; vLLM makes them in well under a second, so it is asked for 8
    completions at once (n, which it supports, sampled, and our transformers engine does not)."""
    if server.engine == "vllm":
        return {"temperature": 1.0, "extra_body": {"ignore_eos": True, "n": 8, "seed": 0}}
    return {"temperature": 0, "extra_body": {"ignore_eos": True}}


@pytest.fixture
def long_stream(server: Server) -> Iterator[Any]:
    """A streaming completion that would run for hundreds of tokens, holding the only slot."""
    stream = client(server).completions.create(
        model=BASE,
        prompt="hello",
        max_tokens=480,
        stream=True,
        **long_generation(server),
    )
    try:
        yield stream
    finally:
        stream.close()


def test_queue_full_is_429_and_a_dropped_stream_stops_generating(server: Server, long_stream: Any) -> None:
    second = client(server)
    refusal = json.dumps({"model": BASE, "prompt": "hi", "max_tokens": 2}).encode()
    # The stream holds the slot from its first chunk on (its slot is taken before generation starts).
    first = next(iter(long_stream))
    assert first.choices
    status, body, headers = post(server, "/v1/completions", refusal)
    assert status == 429, body
    assert body["error"]["type"] == "rate_limit_error"
    assert int(headers["retry-after"]) >= 1
    with pytest.raises(openai.RateLimitError):
        second.chat.completions.create(model=BASE, messages=MESSAGES, max_tokens=2)  # type: ignore[arg-type]

    # 480 tokens take a few seconds on a CPU: the client leaves long before they are done.
    long_stream.close()
    wait_for(lambda: running(server) == 0, timeout=30, what="the slot to free after the client left")
    if server.engine == "transformers":
        # The worker thread logs once generate() has returned, a moment after the slot was freed.
        wait_for(lambda: stopped_generations(server), what="the generation to stop")
        assert stopped_generations(server)[-1] < 480
    assert chat_text(server, BASE, max_tokens=2)


def stopped_generations(server: Server) -> list[int]:
    """How many tokens each generation cut short had produced, from the server's log."""
    marker = "generation stopped after "
    lines = [line for line in server.log_text().splitlines() if marker in line]
    return [int(line.split(marker)[1].split()[0]) for line in lines]


def test_a_client_that_gives_up_stops_its_generation(server: Server) -> None:
    before = len(stopped_generations(server))
    # 0.1 s: far below the long generation even on a quiet machine (at 0.3 s vLLM finished its 8
    # sequences in time once in a clean-clone run), far above a loopback connect.
    impatient = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=0.1)
    with pytest.raises(openai.APITimeoutError):
        impatient.completions.create(model=BASE, prompt="hello", max_tokens=480, **long_generation(server))
    wait_for(lambda: running(server) == 0, what="the slot to free after the client left")
    if server.engine == "transformers":
        wait_for(lambda: len(stopped_generations(server)) > before, what="the generation to stop")
        assert stopped_generations(server)[-1] < 480


def test_sigterm_finishes_in_flight_requests_and_exits_0(model_files: ModelFiles, tmp_path: Path) -> None:
    srv = start_server("transformers", model_files, tmp_path / "server.log")
    try:
        wait_ready(srv)
        result: dict[str, Any] = {}

        def call() -> None:
            result["response"] = client(srv).completions.create(
                model=BASE, prompt="hello", max_tokens=400, temperature=0, extra_body={"ignore_eos": True}
            )
            result["done"] = time.monotonic()

        worker = threading.Thread(target=call)
        worker.start()
        wait_for(lambda: running(srv) == 1, what="the request to start")
        signalled = time.monotonic()
        srv.process.send_signal(signal.SIGTERM)
        worker.join(60)
        assert result["response"].usage.completion_tokens == 400
        assert result["done"] > signalled  # it was still generating when SIGTERM came
        assert srv.process.wait(30) == 0
    finally:
        stop_server(srv)
    assert "stopped" in srv.log.read_text()


def test_missing_weights_is_a_clear_startup_error(tmp_path: Path) -> None:
    empty = tmp_path / "weights"
    empty.mkdir()
    files = ModelFiles(model=empty, adapters=tmp_path / "none")
    srv = start_server("transformers", files, tmp_path / "server.log")
    assert srv.process.wait(60) != 0
    log = srv.log.read_text()
    assert f"--model-dir {empty} holds no model weights" in log
    assert "Traceback" not in log


def test_unknown_config_key_is_a_clear_startup_error(model_files: ModelFiles, tmp_path: Path) -> None:
    config = tmp_path / "inference_config.yaml"
    config.write_text("vllm:\n  gpu-memory-utilization: 0.9\nmax_tokenz: 5\n")
    srv = start_server("transformers", model_files, tmp_path / "server.log", f"--config={config}")
    assert srv.process.wait(60) == 2
    assert "unknown key(s) max_tokenz" in srv.log.read_text()


def test_sigterm_while_loading_exits_0(model_files: ModelFiles, tmp_path: Path) -> None:
    srv = start_server("transformers", model_files, tmp_path / "server.log")
    try:
        wait_for(lambda: "listening on" in srv.log_text(), what="the server to listen")
        assert srv.process.poll() is None
        srv.process.send_signal(signal.SIGTERM)
        assert srv.process.wait(30) == 0
    finally:
        stop_server(srv)
    assert "stopped" in srv.log_text()


def _listener(port: int) -> str | None:
    """The socket inode listening on 127.0.0.1:`port` (state 0A in /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            return inode
    return None


def _holds_socket(pid: int, inode: str) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    target = f"socket:[{inode}]"
    for fd in fds.iterdir():
        try:
            if fd.readlink().as_posix() == target:
                return True
        except OSError:
            continue
    return False


def test_one_http_server_answers(server: Server) -> None:
    """The port clients use is served by the process that generates: with vLLM that is vLLM's own
    server (kaitopy's routes inside it), and the supervising `kaitopy serve` holds no listener, so a
    request crosses one HTTP server; with transformers, the one `kaitopy serve` process."""
    inode = _listener(server.port)
    assert inode is not None
    serve_pid = server.process.pid
    kids = [int(p) for p in Path(f"/proc/{serve_pid}/task/{serve_pid}/children").read_text().split()]
    holders = [pid for pid in [serve_pid, *kids] if _holds_socket(pid, inode)]
    if server.engine == "vllm":
        assert len(holders) == 1 and holders[0] != serve_pid, holders
        assert b"kaitopy.inference.vllm_front" in Path(f"/proc/{holders[0]}/cmdline").read_bytes()
        # Kaito's /chat and kaitopy's metrics come from that same process.
        status, body, _ = post(
            server, "/chat", json.dumps({"prompt": "hi", "generate_kwargs": {"max_length": 8}}).encode()
        )
        assert status == 200 and "Result" in body, body
    else:
        assert holders == [serve_pid]
