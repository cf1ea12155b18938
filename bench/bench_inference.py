"""What kaitopy's model server costs in front of vLLM: the bare vLLM OpenAI server against
`kaitopy serve --engine vllm` (the same vLLM server with kaitopy's routes and middleware inside it, run
by a supervising `kaitopy serve` process), same tiny model, same vLLM flags, same machine, at
concurrency 1, 8 and 32.

Every request streams a chat completion of a fixed length (ignore_eos), so both sides generate the same
tokens; measured: requests/s, output tokens/s and the median time to the first token. Both servers run
at once and the rounds alternate between them, so a noisy neighbour hurts both alike; each run starts
once both servers are quiet (settle()), so neither runs inside the other's busy tail.

    python bench/bench_inference.py [--rounds 3] [--tokens 32] [--out bench/results/inference.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

MODEL = "tiny"
CONCURRENCY = (1, 8, 32)
OURS_CONCURRENCY = 256
PROMPT = [{"role": "user", "content": "hello world , tell me about the kubernetes operator please"}]


@dataclass
class Run:
    server: str
    concurrency: int
    requests: int
    seconds: float
    output_tokens: int
    ttft_ms: list[float]
    # CPU seconds kaitopy's own process (the front, not its vLLM child) spent on this run.
    front_cpu_s: float = 0.0
    # CPU seconds of every process of the server under test (vLLM's included): what the run cost the
    # machine, much less sensitive to other work on it than the wall-clock rates.
    server_cpu_s: float = 0.0
    # CPU seconds the other (idle) server's processes used during this run: near 0 when settled.
    other_cpu_s: float = 0.0
    # Seconds waited before this run for both servers to go quiet (settle()).
    settled_s: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds

    @property
    def median_ttft_ms(self) -> float:
        return statistics.median(self.ttft_ms)


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of one process (not its children), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *descendants(int(child))]
    return found


def tree_cpu_seconds(root: int) -> float:
    total = 0.0
    for pid in (root, *descendants(root)):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += cpu_seconds(pid)
    return total


# A server's engine processes keep about one core busy for about a second after its last request
# (measured here: 96-100 % of a core for 1 s, then 0-4 %). On a 2-core machine a run that starts
# inside the other server's tail loses that core, so every run waits for both servers to go quiet.
QUIET_CORES = 0.1
QUIET_WINDOW_S = 0.5
SETTLE_LIMIT_S = 15.0


async def settle(roots: list[int]) -> float:
    """Wait until the servers' processes together use under QUIET_CORES of a core over QUIET_WINDOW_S
    (at most SETTLE_LIMIT_S); the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < SETTLE_LIMIT_S:
        before = sum(tree_cpu_seconds(r) for r in roots)
        await asyncio.sleep(QUIET_WINDOW_S)
        if sum(tree_cpu_seconds(r) for r in roots) - before < QUIET_CORES * QUIET_WINDOW_S:
            break
    return time.monotonic() - start


def pin(pids: list[int], cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of these processes (affinity is per thread)."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.sched_setaffinity(int(task.name), cpus)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
            try:
                async with session.get(f"{url}/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    raise RuntimeError(f"{url} not healthy within {timeout} s")


async def one_request(session: aiohttp.ClientSession, url: str, tokens: int) -> tuple[float, int]:
    """(seconds to the first content chunk, output tokens) for one streamed chat completion; the tokens
    come from the usage chunk, since vLLM puts several tokens in one chunk when the reader lags."""
    body = {
        "model": MODEL,
        "messages": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = 0.0
    count = 0
    usage_tokens = None
    async with session.post(f"{url}/v1/chat/completions", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"{url}: {r.status} {await r.text()}")
        async for raw in r.content:
            line = raw.strip()
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                usage_tokens = chunk["usage"]["completion_tokens"]
            choices = chunk.get("choices") or []
            if choices and choices[0].get("delta", {}).get("content"):
                if count == 0:
                    first = time.perf_counter() - start
                count += 1
    return first, usage_tokens if usage_tokens is not None else count


async def load(server: str, url: str, concurrency: int, requests: int, tokens: int) -> Run:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    ttfts: list[float] = []
    total = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal total
        while True:
            try:
                queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            first, count = await one_request(session, url, tokens)
            ttfts.append(first * 1000)
            total += count

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None)
    ) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return Run(server, concurrency, requests, seconds, total, ttfts)


def build_model(root: Path) -> Path:
    from tests.support.tinymodel import build_tiny_model

    return build_tiny_model(root / "model")


async def planned_argv(model: Path, port: int) -> list[str]:
    """The vLLM flags kaitopy's engine would pass, so the bare server runs with exactly the same ones."""
    from kaitopy.inference.settings import InferenceConfig, ServeSettings
    from kaitopy.inference.vllm_engine import VllmEngine

    settings = ServeSettings(
        engine="vllm",
        model_dir=model,
        served_model_name=MODEL,
        dtype="float32",
        # As `ours` is started below: the planned --max-num-seqs follows it.
        max_concurrency=OURS_CONCURRENCY,
        config=InferenceConfig(),
    )
    plan = await VllmEngine(settings).plan(port)
    return plan.argv


def spawn(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per concurrency")
    parser.add_argument("--tokens", type=int, default=32, help="output tokens per request")
    parser.add_argument(
        "--requests-per-worker", type=int, default=24, help="sets each run's length (seconds)"
    )
    parser.add_argument("--out", type=Path, help="default: bench/results/inference[-pinned].json")
    parser.add_argument(
        "--no-settle",
        action="store_true",
        help="start each run at once, inside the previous server's busy tail (the method before settle())",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="vLLM (both servers) on CPU 0, kaitopy's front and this client on the others: the front's work "
        "then does not take cores from vLLM, as on a GPU node where the model runs on the GPU",
    )
    args = parser.parse_args()
    if args.out is None:
        args.out = ROOT / "bench" / "results" / ("inference-pinned.json" if args.pin else "inference.json")
    if importlib.util.find_spec("vllm") is None:
        print("bench_inference: skipped, vLLM is not installed (make install-inference-cpu)")
        return 0

    load_before = os.getloadavg()
    env = {**os.environ, "VLLM_HOST_IP": "127.0.0.1"}
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        model = build_model(Path(tmp))
        bare_port, ours_port = free_port(), free_port()
        argv = await planned_argv(model, bare_port)
        logs = Path(tmp)
        bare = spawn(
            [
                sys.executable,
                "-m",
                "vllm.entrypoints.openai.api_server",
                *argv,
                "--disable-uvicorn-access-log",
            ],
            logs / "bare.log",
            env,
        )
        ours = spawn(
            [
                *(sys.executable, "-m", "kaitopy.inference", "serve", "--engine=vllm"),
                *(f"--model-dir={model}", f"--served-model-name={MODEL}", "--dtype=float32"),
                *(
                    "--host=127.0.0.1",
                    f"--port={ours_port}",
                    f"--max-concurrency={OURS_CONCURRENCY}",
                    "--max-queue=1024",
                ),
            ],
            logs / "ours.log",
            env,
        )
        urls = {"bare": f"http://127.0.0.1:{bare_port}", "ours": f"http://127.0.0.1:{ours_port}"}
        try:
            t0 = time.monotonic()
            await wait_healthy(urls["bare"], bare)
            await wait_healthy(urls["ours"], ours)
            print(f"both servers healthy after {time.monotonic() - t0:.0f} s")
            if args.pin:
                cpus = sorted(os.sched_getaffinity(0))
                vllm_cpus, other = {cpus[0]}, set(cpus[1:]) or {cpus[0]}
                pin([bare.pid, *descendants(bare.pid), *descendants(ours.pid)], vllm_cpus)
                pin([ours.pid, os.getpid()], other)
                print(f"pinned: vLLM on CPUs {sorted(vllm_cpus)}, front and client on {sorted(other)}")
            for url in urls.values():  # warm-up: first requests compile and allocate
                await load("warmup", url, 4, 8, args.tokens)
            runs: dict[tuple[str, int], list[Run]] = {}
            for concurrency in CONCURRENCY:
                requests = concurrency * args.requests_per_worker
                for r in range(args.rounds):
                    order = ("bare", "ours") if r % 2 == 0 else ("ours", "bare")
                    for server in order:
                        root = ours.pid if server == "ours" else bare.pid
                        other = bare.pid if server == "ours" else ours.pid
                        waited = 0.0 if args.no_settle else await settle([bare.pid, ours.pid])
                        tree = [root, *descendants(root)]
                        front_before = cpu_seconds(ours.pid)
                        tree_before = sum(cpu_seconds(p) for p in tree)
                        other_before = tree_cpu_seconds(other)
                        run = await load(server, urls[server], concurrency, requests, args.tokens)
                        run.server_cpu_s = sum(cpu_seconds(p) for p in tree) - tree_before
                        run.other_cpu_s = tree_cpu_seconds(other) - other_before
                        run.settled_s = waited
                        if server == "ours":
                            run.front_cpu_s = cpu_seconds(ours.pid) - front_before
                        runs.setdefault((server, concurrency), []).append(run)
        finally:
            stop(ours)
            stop(bare)

    def cpu_per_token(run: Run) -> float:
        return run.server_cpu_s / run.output_tokens * 1e6

    def best(server: str, c: int) -> Run:
        # The fastest round is the one least disturbed by other work on the machine.
        return max(runs[(server, c)], key=lambda run: run.tokens_per_s)

    rows: list[dict[str, Any]] = []
    print(
        f"\n{'conc':>4} {'server':>6} {'req/s':>8} {'tok/s':>9} {'TTFT p50 ms':>12} {'CPU us/tok':>11}"
        f" {'ours/bare tok/s':>16} {'front CPU us/tok':>17} {'ours/bare CPU':>14}"
    )
    for c in CONCURRENCY:
        b, o = best("bare", c), best("ours", c)
        ratio = o.tokens_per_s / b.tokens_per_s
        median_ratio = statistics.median(r.tokens_per_s for r in runs[("ours", c)]) / statistics.median(
            r.tokens_per_s for r in runs[("bare", c)]
        )
        cpu_ratio = statistics.median(cpu_per_token(r) for r in runs[("ours", c)]) / statistics.median(
            cpu_per_token(r) for r in runs[("bare", c)]
        )
        for run in (b, o):
            line = (
                f"{c:>4} {run.server:>6} {run.rps:>8.2f} {run.tokens_per_s:>9.1f} {run.median_ttft_ms:>12.1f}"
            )
            line += f" {cpu_per_token(run):>11.0f}"
            if run is o:
                line += (
                    f" {ratio:>16.3f} {run.front_cpu_s / run.output_tokens * 1e6:>17.0f} {cpu_ratio:>14.3f}"
                )
            print(line)
        rows.append(
            {
                "concurrency": c,
                "bare": {"rps": b.rps, "tokens_per_s": b.tokens_per_s, "median_ttft_ms": b.median_ttft_ms},
                "ours": {
                    "rps": o.rps,
                    "tokens_per_s": o.tokens_per_s,
                    "median_ttft_ms": o.median_ttft_ms,
                    "front_cpu_us_per_token": o.front_cpu_s / o.output_tokens * 1e6,
                },
                "ratio_tokens_per_s": ratio,
                "ratio_tokens_per_s_of_medians": median_ratio,
                "ttft_p50_delta_ms": statistics.median(r.median_ttft_ms for r in runs[("ours", c)])
                - statistics.median(r.median_ttft_ms for r in runs[("bare", c)]),
                "ratio_rps": o.rps / b.rps,
                "ratio_server_cpu_per_token_of_medians": cpu_ratio,
                "rounds": {
                    s: [asdict(run) | {"tokens_per_s": run.tokens_per_s} for run in runs[(s, c)]]
                    for s in ("bare", "ours")
                },
            }
        )
    load_after = os.getloadavg()
    print(
        "load average before / after: "
        + " / ".join(", ".join(f"{x:.2f}" for x in avg) for avg in (load_before, load_after))
    )
    idle = max(run.other_cpu_s / run.seconds for rounds in runs.values() for run in rounds)
    print(f"the idle server used at most {idle:.2f} of a core during the other's runs")
    overhead = max(0.0, 1 - min(row["ratio_tokens_per_s"] for row in rows))
    medians = ", ".join(f"c={row['concurrency']}: {row['ratio_tokens_per_s_of_medians']:.3f}" for row in rows)
    print(f"ours/bare tok/s, medians of the rounds: {medians}")
    deltas = ", ".join(f"c={row['concurrency']}: {row['ttft_p50_delta_ms']:+.1f} ms" for row in rows)
    print(f"TTFT p50, ours - bare (medians of the rounds): {deltas}")
    print(f"largest throughput cost of kaitopy's layer (best rounds): {overhead * 100:.1f}% (goal < 3%)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "inference",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "model": "tests/support/tinymodel (2-layer Llama, float32, CPU)",
        "tokens_per_request": args.tokens,
        "rounds": args.rounds,
        "pinned": args.pin,
        "settled": not args.no_settle,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "vllm_argv": argv,
        "results": rows,
        "max_overhead": overhead,
    }
    for row in result["results"]:
        for rounds in row["rounds"].values():
            for run in rounds:
                run.pop("ttft_ms")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
