"""The vLLM engine: vLLM's OpenAI server runs as a child process on 127.0.0.1 and kaitopy's front
forwards to it.

The child owns the model, batching and the KV cache; this side plans its flags (vllm_args), waits for
its /health, forwards requests with one pooled aiohttp session, maps its error JSON to RequestError and
keeps a copy of its /metrics. A child that dies takes the pod with it (non-zero exit) so Kubernetes
restarts it rather than leaving a server that answers 503 forever.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from kaitopy.inference import adapters, childlog, procgroup
from kaitopy.inference.engine import EngineResult, RequestError, unknown_model
from kaitopy.inference.settings import SettingsError
from kaitopy.inference.vllm_args import (
    Adapter,
    PlanError,
    VllmOptions,
    VllmPlan,
    adapter_shape_problem,
    base_weight_shapes,
    discover_adapters,
    plan_vllm,
    read_model_shape,
    serving_dtype,
)
from kaitopy.inference.vllm_front import ADAPTER_STATUS, CONTROL_HEADER, FRONT_ENV, MIDDLEWARE, FrontConfig
from kaitopy.inference.vllm_memory import measure_memory, with_limit
from kaitopy.inference.vllm_options import known_vllm_options

log = logging.getLogger(__name__)

VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
FRONT_MODULE = "kaitopy.inference.vllm_front"
FOLLOWER_MODULE = "kaitopy.inference.vllm_follower"
EXIT_CHILD_DIED = 3
# How often a long vLLM start says it is still going.
PROGRESS_EVERY_S = 30.0
# Consecutive failed /health checks of a live child before ready() turns false.
UNHEALTHY_AFTER = 3
# vLLM's /metrics also carries the python_* and process_* families of its own Prometheus client; the
# front's registry has the same names, and one exposition may not repeat a family.
_METRIC_PREFIXES = (b"vllm:", b"# HELP vllm:", b"# TYPE vllm:")


# How vLLM words "prompt plus max_tokens does not fit the context" (0.32).
_CONTEXT_MARKERS = ("maximum context length", "max_model_len")


class ServeConfig(Protocol):
    """The parsed inference_config.yaml, as far as this engine reads it."""

    @property
    def vllm(self) -> Mapping[str, Any]: ...


class VllmSettings(Protocol):
    """What this engine reads from kaitopy serve's settings (settings.ServeSettings)."""

    @property
    def model_dir(self) -> Path: ...
    @property
    def served_model_name(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def tensor_parallel_size(self) -> int: ...
    @property
    def pipeline_parallel_size(self) -> int: ...
    @property
    def adapter_dir(self) -> Path | None: ...
    @property
    def max_model_len(self) -> int | None: ...
    @property
    def tool_call_parser(self) -> str | None: ...
    @property
    def reasoning_parser(self) -> str | None: ...
    @property
    def adapter_strengths(self) -> Mapping[str, float]: ...
    @property
    def role(self) -> str: ...
    @property
    def leader_address(self) -> str | None: ...
    @property
    def node_rank(self) -> int: ...
    @property
    def leader_port(self) -> int: ...
    @property
    def max_concurrency(self) -> int: ...
    @property
    def max_queue(self) -> int: ...
    @property
    def max_tokens_limit(self) -> int: ...
    @property
    def request_timeout_s(self) -> float: ...
    @property
    def api_key(self) -> str | None: ...
    @property
    def default_max_tokens(self) -> int: ...
    @property
    def memory_limit_bytes(self) -> int | None: ...
    @property
    def config(self) -> ServeConfig: ...
    @property
    def adapter_desired_file(self) -> Path | None: ...
    @property
    def hot_lora_slots(self) -> int: ...
    @property
    def hot_lora_max_rank(self) -> int: ...


_SECRET_FLAG = re.compile(r"token|secret|password|passwd|key|credential", re.IGNORECASE)


def redacted(argv: list[str]) -> list[str]:
    """argv for the log: the value after any flag whose name suggests a secret is masked. The config
    file may not set api-key or hf-token at all; this covers whatever vLLM option grows one next."""
    shown = list(argv)
    for i, arg in enumerate(shown[:-1]):
        if arg.startswith("--") and _SECRET_FLAG.search(arg) and not shown[i + 1].startswith("--"):
            shown[i + 1] = "***"
    return [
        a.split("=", 1)[0] + "=***"
        if a.startswith("--") and "=" in a and _SECRET_FLAG.search(a.split("=", 1)[0])
        else a
        for a in shown
    ]


def compile_cache(env: Mapping[str, str]) -> Path:
    """Where vLLM keeps compiled models: $VLLM_CACHE_ROOT, else $XDG_CACHE_HOME/vllm or ~/.cache/vllm."""
    root = env.get("VLLM_CACHE_ROOT")
    if root:
        return Path(root) / "torch_compile_cache"
    xdg = env.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path(env.get("HOME") or Path.home()) / ".cache"
    return base / "vllm" / "torch_compile_cache"


def compile_notice(env: Mapping[str, str], argv: list[str]) -> str | None:
    """What to tell the operator before a start that will compile (a silent first start took over
    3 minutes on 2 CPU cores), or None: the cache holds compiled models, or the config turned
    compilation off."""
    if "--compilation-config" in argv or "--enforce-eager" in argv:
        return None
    cache = compile_cache(env)
    try:
        if any(cache.iterdir()):
            return None
    except OSError:
        pass
    return (
        "first vLLM start with this cache: it compiles the model for this machine, which takes minutes "
        f"(over 3 on 2 CPU cores); later starts reuse {cache}"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scaled_adapter(adapter: Adapter, factor: float, workdir: Path) -> Adapter:
    """A copy of `adapter` whose effect is scaled by `factor`.

    vLLM has no per-adapter strength; a LoRA's delta is (lora_alpha / r) * B @ A, so scaling lora_alpha
    scales the delta exactly. The weights are linked, only adapter_config.json is rewritten.
    """
    target = workdir / adapter.name
    target.mkdir(parents=True, exist_ok=True)
    for item in adapter.path.iterdir():
        if item.name != "adapter_config.json" and not (target / item.name).exists():
            (target / item.name).symlink_to(item.resolve())
    config = json.loads((adapter.path / "adapter_config.json").read_text())
    config["lora_alpha"] = float(config.get("lora_alpha", adapter.rank)) * factor
    (target / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return Adapter(adapter.name, target, adapter.rank)


def filter_metrics(text: bytes) -> bytes:
    """Only vLLM's own families (vllm:*) from the child's exposition."""
    lines = [line for line in text.splitlines() if line.startswith(_METRIC_PREFIXES)]
    return b"\n".join(lines) + b"\n" if lines else b""


def _validation_message(message: str) -> tuple[str, str | None]:
    """vLLM answers a request its schema rejects with the raw validation dump, e.g.
    "[{'type': 'float_parsing', 'loc': ('body', 'temperature'), 'msg': 'Input should be ...', ...}]".
    Returns ("temperature: Input should be ...", "temperature"), or the message as is."""
    if not message.startswith("[{"):
        return message, None
    with contextlib.suppress(ValueError, SyntaxError, MemoryError, RecursionError):
        errors = ast.literal_eval(message)
        if isinstance(errors, list) and errors and all(isinstance(e, dict) for e in errors):
            parts: list[str] = []
            param: str | None = None
            for error in errors:
                loc = [str(p) for p in error.get("loc") or () if p != "body"]
                where = ".".join(loc)
                param = param or (loc[0] if loc else None)
                parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
            return "; ".join(parts), param
    return message, None


def request_error(status: int, payload: Any, fallback: str, input_param: str = "messages") -> RequestError:
    """The child's OpenAI error JSON as a RequestError with its status and message.

    vLLM's habits are brought in line with OpenAI (and the transformers engine): its own error type
    names (BadRequestError, ...) give way to the type the status implies, raw validation dumps become
    one readable line, request-validation errors name the field without `body.`, and a request that
    does not fit the context names the token count it broke as `context_length_exceeded` on the input.
    """
    err = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(err, dict):
        return RequestError(fallback or f"vLLM answered {status}", status=status)
    message, dumped_param = _validation_message(str(err.get("message") or fallback))
    code = err.get("code")
    param = err.get("param") if isinstance(err.get("param"), str) else dumped_param
    if param is not None and param.startswith("body."):
        param = param[len("body.") :]
    # vLLM puts the HTTP status (or its name) in `code`; OpenAI's codes are words such as model_not_found.
    code = code if isinstance(code, str) and not code.isdigit() and code != err.get("type") else None
    if status == 400 and any(marker in message for marker in _CONTEXT_MARKERS):
        param, code = input_param, "context_length_exceeded"
    return RequestError(message, status=status, param=param, code=code)


def _decoder() -> Callable[[bytes], Any]:
    # msgspec (a vLLM dependency) decodes a chunk several times faster than json; every streamed token
    # passes through here, so on a CPU-bound node this is throughput.
    try:
        import msgspec
    except ImportError:
        return json.loads
    decode: Callable[[bytes], Any] = msgspec.json.Decoder().decode
    return decode


async def _sse_chunks(
    response: aiohttp.ClientResponse, decode: Callable[[bytes], Any]
) -> AsyncIterator[dict[str, Any]]:
    """The child's SSE stream as chunk objects; ends at [DONE].

    Reads whatever bytes have arrived and splits events on the blank line, rather than a readline
    round-trip per line: under load several events arrive in one read.
    """
    buffer = b""
    try:
        async for data in response.content.iter_any():
            buffer += data
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                for line in event.splitlines():
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        return
                    chunk: dict[str, Any] = decode(payload)
                    yield chunk
    finally:
        # Stops the child's generation when the client went away before the end.
        response.close()


class VllmEngine:
    name = "vllm"

    def __init__(
        self,
        settings: VllmSettings,
        *,
        python: str = sys.executable,
        startup_timeout: float = 1800.0,
        metrics_interval: float = 5.0,
        on_child_death: Callable[[int], None] | None = None,
        public: tuple[str, int] | None = None,
    ) -> None:
        self._settings = settings
        self._python = python
        self._startup_timeout = startup_timeout
        self._metrics_interval = metrics_interval
        # Default: leave the process with a non-zero code so the pod restarts (tests pass their own).
        self._on_child_death = on_child_death or _exit_process
        self._plan: VllmPlan | None = None
        self._child: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None
        self._base = ""
        self._healthy = False
        self._stopping = False
        self._metrics = b""
        self._tasks: list[asyncio.Task[None]] = []
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._decode = _decoder()
        self._relay: asyncio.Task[None] | None = None
        self._child_log = childlog.RepeatFilter()
        # Hot-load (single node only: on several, each worker would need the files too).
        self._hot = settings.adapter_desired_file is not None and settings.role == "single"
        self._served: list[str] = []  # the adapters served now, hot-loaded ones included
        self._lora_rank = 0
        self._seq = 0
        # (host, port): the child is the only HTTP server, vLLM's app with kaitopy's routes inside
        # (vllm_front); None: it listens on loopback behind kaitopy's aiohttp front.
        self._public = public
        # One-hop: the secret that opens the child's hot-load routes to this process alone.
        self._control_token = secrets.token_urlsafe(32) if public is not None else None

    @property
    def serves_http(self) -> bool:
        """Whether clients talk to the child directly (the front must not listen)."""
        return self._public is not None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def plan(self, port: int, host: str = "127.0.0.1") -> VllmPlan:
        s = self._settings
        scan = discover_adapters(s.adapter_dir)
        for problem in scan.problems:
            log.error("%s", problem)
        served = await asyncio.to_thread(self._checked, scan.adapters)
        if any(f != 1.0 for f in s.adapter_strengths.values()):
            self._workdir = tempfile.TemporaryDirectory(prefix="kaitopy-adapters-")
            served = [
                scaled_adapter(a, s.adapter_strengths[a.name], Path(self._workdir.name))
                if s.adapter_strengths.get(a.name, 1.0) != 1.0
                else a
                for a in served
            ]
        unknown = sorted(set(s.adapter_strengths) - {a.name for a in served})
        if unknown:
            log.warning("--adapter-strength names adapters that are not served: %s", ", ".join(unknown))
        measured, known = await asyncio.gather(measure_memory(), known_vllm_options(self._python))
        memory = with_limit(measured, s.memory_limit_bytes)
        shape = await asyncio.to_thread(read_model_shape, s.model_dir, serving_dtype(s.dtype, memory.device))
        options = VllmOptions(
            model_dir=s.model_dir,
            served_model_name=s.served_model_name,
            dtype=s.dtype,
            tensor_parallel_size=s.tensor_parallel_size,
            pipeline_parallel_size=s.pipeline_parallel_size,
            max_model_len=s.max_model_len,
            tool_call_parser=s.tool_call_parser,
            reasoning_parser=s.reasoning_parser,
            extra=dict(s.config.vllm),
            adapters=served,
            host=host,
            port=port,
            role=s.role,
            leader_address=s.leader_address,
            num_nodes=s.pipeline_parallel_size,
            node_rank=s.node_rank,
            leader_port=s.leader_port,
            max_concurrency=s.max_concurrency,
            hot_lora_slots=s.hot_lora_slots if self._hot else 0,
            hot_lora_max_rank=s.hot_lora_max_rank if self._hot else 0,
        )
        plan = plan_vllm(options, shape, memory, known)
        for note in plan.notes:
            log.warning("%s", note)
        for line in plan.sizing:
            log.info("%s", line)
        log.info(
            "vLLM plan: %s memory %.1f GiB free of %.1f GiB, context %d tokens, models %s",
            memory.device,
            memory.free_bytes / 1024**3,
            memory.total_bytes / 1024**3,
            plan.max_model_len,
            ", ".join(plan.model_ids),
        )
        return plan

    def _checked(self, found: list[Adapter]) -> list[Adapter]:
        """The adapters that pass the same checks the transformers engine makes (targets that exist in the
        base model, readable LoRA weights, a name not taken), so both engines serve the same set."""
        if not found:
            return []
        base = base_weight_shapes(self._settings.model_dir)
        modules = sorted({key.rpartition(".")[0] for key in base})
        served = {a.path: a for a in found}
        specs = adapters.usable(list(served), modules, self._settings.served_model_name)
        checked: list[Adapter] = []
        for spec in specs:
            adapter = served[spec.path]
            problem = adapter_shape_problem(adapter.path, adapter.rank, base)
            if problem is None:
                checked.append(adapter)
            else:
                log.error("adapter %s skipped: %s", adapter.name, problem)
        return checked

    async def start(self) -> None:
        host, port = self._public or ("127.0.0.1", free_port())
        try:
            self._plan = plan = await self.plan(port, host)
        except PlanError as exc:
            # A setting to fix, not a bug: the front logs it as one line.
            raise SettingsError(str(exc)) from None
        self._served = plan.model_ids[1:]
        env = dict(os.environ)
        if self._hot:
            # vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter exist only with this set.
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
            self._lora_rank = reserved_lora_rank(plan)
        if not plan.multi_node:
            # Single node: vLLM's own processes talk over loopback only.
            env["VLLM_HOST_IP"] = "127.0.0.1"
        elif os.environ.get("POD_IP"):
            # Multi-node: the group's other pods reach this one's ranks at the pod's own address.
            env["VLLM_HOST_IP"] = os.environ["POD_IP"]
        if not plan.serves:
            # A multi-node worker runs its pipeline stage headless; the leader serves the requests.
            s = self._settings
            argv = [self._python, "-m", FOLLOWER_MODULE, *plan.argv]
            log.info(
                "multi-node worker, node rank %d: joining the leader at %s:%d (%s)",
                s.node_rank,
                s.leader_address,
                s.leader_port,
                " ".join(redacted(argv)),
            )
            await self._spawn(argv, env)
            self._healthy = True
            self._tasks.append(asyncio.create_task(self._watch_child()))
            return
        if plan.multi_node:
            log.info(
                "multi-node leader: vLLM starts serving once all %d nodes have joined on port %d",
                self._settings.pipeline_parallel_size,
                self._settings.leader_port,
            )
        probe_host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        self._base = f"http://{probe_host}:{port}"
        control = {CONTROL_HEADER.decode(): self._control_token} if self._control_token else None
        self._session = aiohttp.ClientSession(
            self._base,
            headers=control,
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            read_bufsize=2**20,
        )
        argv = [self._python, "-m", VLLM_SERVER_MODULE, *plan.argv, "--disable-uvicorn-access-log"]
        if self._public is not None:
            argv = [self._python, "-m", FRONT_MODULE, *plan.argv, "--disable-uvicorn-access-log"]
            argv += ["--middleware", MIDDLEWARE]
            env[FRONT_ENV] = self._front_config(plan).to_env()
        log.info("starting vLLM: %s", " ".join(redacted(argv)))
        notice = compile_notice(env, argv)
        if notice:
            log.info("%s", notice)
        await self._spawn(argv, env)
        await self._wait_healthy()
        self._healthy = True
        self._tasks.append(asyncio.create_task(self._watch_child()))
        if self._public is None:
            # One-hop: /metrics and the probes reach the child itself; nothing to copy.
            self._tasks.append(asyncio.create_task(self._scrape_metrics()))

    async def _spawn(self, argv: list[str], env: dict[str, str]) -> None:
        """Start `argv` as the child (its own process group), its output relayed to the log."""
        # The output pipe is this side's own, not asyncio's: vLLM's engine processes inherit it, and a
        # Process whose pipe is still open does not report its exit (a killed child went unnoticed).
        read_fd, write_fd = os.pipe()
        try:
            self._child = await procgroup.start(
                *argv, env=env, stdout=write_fd, stderr=asyncio.subprocess.STDOUT
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        reader = asyncio.StreamReader(limit=2**20)
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0)
        )
        self._relay = asyncio.create_task(childlog.relay(reader, self._child_log))

    def _front_config(self, plan: VllmPlan) -> FrontConfig:
        s = self._settings
        return FrontConfig(
            model_ids=list(plan.model_ids),
            max_model_len=plan.max_model_len,
            max_concurrency=s.max_concurrency,
            max_queue=s.max_queue,
            default_max_tokens=s.default_max_tokens,
            max_tokens_limit=s.max_tokens_limit,
            request_timeout_s=s.request_timeout_s,
            # To the child's environment, never its argv (which `ps` shows and the log prints).
            api_key=s.api_key,
            control_token=self._control_token,
        )

    async def _wait_healthy(self) -> None:
        assert self._child is not None and self._session is not None
        started = time.monotonic()
        deadline = started + self._startup_timeout
        next_note = started + PROGRESS_EVERY_S
        while time.monotonic() < deadline:
            if time.monotonic() >= next_note:
                next_note += PROGRESS_EVERY_S
                log.info(
                    "vLLM is still starting (%.0f s): loading, compiling, warming up",
                    time.monotonic() - started,
                )
            if self._child.returncode is not None:
                raise RuntimeError(
                    f"vLLM exited with code {self._child.returncode} while starting (see its log above)"
                )
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with self._session.get("/health", timeout=aiohttp.ClientTimeout(total=5)) as r:
                    if r.status == 200:
                        log.info("vLLM is healthy on %s", self._base)
                        return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._child.wait()), 0.5)
        await self._terminate()
        raise RuntimeError(f"vLLM was not healthy within {self._startup_timeout:.0f} s")

    async def _watch_child(self) -> None:
        assert self._child is not None
        code = await self._child.wait()
        if self._stopping:
            return
        self._healthy = False
        log.error("the vLLM child exited with code %s; the model server stops", code)
        # Its engine core and workers may outlive it: they go first, or they would be orphaned.
        await procgroup.stop_group(self._child)
        self._on_child_death(code)

    async def _scrape_metrics(self) -> None:
        """Keep a copy of the child's metrics (extra_metrics() must not wait on the child) and follow its
        health: a child that is alive but stops answering makes ready() false, so the pod's liveness
        probe restarts it."""
        assert self._session is not None
        failures = 0
        while True:
            try:
                async with self._session.get("/metrics", timeout=aiohttp.ClientTimeout(total=10)) as r:
                    if r.status == 200:
                        self._metrics = filter_metrics(await r.read())
                async with self._session.get("/health", timeout=aiohttp.ClientTimeout(total=10)) as r:
                    healthy = r.status == 200
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.debug("vLLM /metrics or /health failed: %s", exc)
                healthy = False
            failures = 0 if healthy else failures + 1
            if self._healthy and failures >= UNHEALTHY_AFTER:
                log.error("vLLM failed %d health checks in a row; reporting not ready", failures)
            if not self._stopping:
                self._healthy = failures < UNHEALTHY_AFTER
            await asyncio.sleep(self._metrics_interval)

    async def stop(self) -> None:
        self._stopping = True
        self._healthy = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self._terminate()
        await self._end_relay()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    async def _end_relay(self) -> None:
        """Pass on the child's last lines (its pipe closes with its last process)."""
        relay, self._relay = self._relay, None
        if relay is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(relay, 10)
        if self._child_log.dropped:
            log.info("%d repeated warnings of vLLM's were left out of this log", self._child_log.dropped)
        if self._child_log.shutdown_dropped:
            log.info(
                "left out vLLM's EngineDeadError report (%d lines): its engine stopped as asked",
                self._child_log.shutdown_dropped,
            )

    async def _terminate(self, grace: float = 20.0) -> None:
        """Stop the child and its engine processes (its whole process group), SIGKILL after `grace`."""
        if self._child is not None:
            self._child_log.stopping = True
            await procgroup.stop_group(self._child, grace=grace)

    # -- the Engine protocol -----------------------------------------------------------------------

    def ready(self) -> bool:
        return self._healthy and self._child is not None and self._child.returncode is None

    def model_ids(self) -> list[str]:
        if self._plan is None or not self._plan.serves:
            return []
        return [self._plan.model_ids[0], *self._served]

    # -- hot-load (hotload.AdapterManager calls these) ----------------------------------------------

    async def load_adapter(self, name: str, path: Path, strength: float) -> None:
        if not self._hot:
            raise adapters.AdapterInvalid("this server was started without hot-load")
        adapter = await asyncio.to_thread(self._hot_checked, name, path)
        if strength != 1.0:
            if self._workdir is None:
                self._workdir = tempfile.TemporaryDirectory(prefix="kaitopy-adapters-")
            self._seq += 1
            adapter = scaled_adapter(adapter, strength, Path(self._workdir.name) / str(self._seq))
        if name in self._served:
            await self.unload_adapter(name)
        await self._lora_call("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(adapter.path)})
        self._served.append(name)

    async def unload_adapter(self, name: str) -> None:
        if name not in self._served:
            return
        # Out of the served list first: no new request picks it while vLLM drops it.
        self._served.remove(name)
        await self._lora_call("/v1/unload_lora_adapter", {"lora_name": name})

    def _hot_checked(self, name: str, path: Path) -> Adapter:
        scan = discover_adapters(path)
        if scan.problems:
            raise adapters.AdapterInvalid("; ".join(scan.problems))
        if not scan.adapters:
            raise adapters.AdapterInvalid("no adapter_config.json")
        found = scan.adapters[0]
        base = base_weight_shapes(self._settings.model_dir)
        modules = sorted({key.rpartition(".")[0] for key in base})
        taken = [self._settings.served_model_name, *(n for n in self._served if n != name)]
        adapters.check(path, modules, taken)
        if found.rank > self._lora_rank:
            raise adapters.AdapterInvalid(
                f"rank r={found.rank} is over the {self._lora_rank} this server reserved at start "
                "(--hot-lora-max-rank)"
            )
        problem = adapter_shape_problem(path, found.rank, base)
        if problem is not None:
            raise adapters.AdapterInvalid(problem)
        return Adapter(name, path, found.rank)

    async def publish_adapter_status(self, status: dict[str, Any]) -> None:
        """One-hop: hand hot-load's per-adapter states to the child, which answers GET /adapters."""
        if self._session is None:
            raise RuntimeError("vLLM is not running")
        async with self._session.post(ADAPTER_STATUS, json=status) as response:
            if response.status >= 400:
                raise RuntimeError(f"the server refused the adapter states: {response.status}")

    async def _lora_call(self, path: str, body: dict[str, Any]) -> None:
        if self._session is None:
            raise RuntimeError("vLLM is not running")
        async with self._session.post(path, json=body) as response:
            if response.status >= 400:
                text = (await response.text()).strip()
                try:
                    payload = json.loads(text)
                except ValueError:
                    payload = None
                err = request_error(response.status, payload, text)
                raise adapters.AdapterInvalid(f"vLLM refused it: {err.message}")

    def extra_metrics(self) -> bytes:
        return self._metrics

    async def chat_completion(self, body: dict[str, Any]) -> EngineResult:
        return await self._forward("/v1/chat/completions", body)

    async def completion(self, body: dict[str, Any]) -> EngineResult:
        return await self._forward("/v1/completions", body)

    async def count_prompt_tokens(self, body: dict[str, Any]) -> int:
        """The prompt's length as the child tokenizes it (its /tokenize applies the chat template)."""
        request: dict[str, Any] = {"model": body.get("model") or self.model_ids()[0]}
        if "messages" in body:
            request |= {"messages": body["messages"], "add_generation_prompt": True}
        else:
            prompt = body.get("prompt", "")
            if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
                return len(prompt)  # already token ids
            request["prompt"] = prompt
        result = await self._call("/tokenize", request)
        return int(result["count"])

    async def _default_max_tokens(self, body: dict[str, Any]) -> int:
        """The server's default for a request without max_tokens, or the room the context has left
        when that is less. vLLM's own default is all the room left; its generation-config
        max_new_tokens would also cap the requests that ask for more, so the prompt is counted here."""
        assert self._plan is not None
        room = self._plan.max_model_len - await self.count_prompt_tokens(body)
        # No room at all: ask for one token, and vLLM answers the context error the client must see.
        return max(1, min(self._settings.default_max_tokens, room))

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        result = await self._forward(path, body)
        assert isinstance(result, dict)
        return result

    async def _forward(self, path: str, body: dict[str, Any]) -> EngineResult:
        if self._session is None or not self.ready():
            raise RequestError("the model is not ready", status=503)
        known = self.model_ids()
        model = body.get("model")
        if model is None:
            body = {**body, "model": known[0]}
        elif model not in known:
            raise unknown_model(model, known)
        if (
            path != "/tokenize"
            and body.get("max_tokens") is None
            and body.get("max_completion_tokens") is None
        ):
            body = {**body, "max_tokens": await self._default_max_tokens(body)}
        response = await self._session.post(path, json=body)
        if response.status >= 400:
            async with response:
                text = await response.text()
            try:
                payload = json.loads(text)
            except ValueError:
                payload = None
            input_param = "messages" if "messages" in body else "prompt"
            raise request_error(response.status, payload, text.strip(), input_param)
        if body.get("stream"):
            return _sse_chunks(response, self._decode)
        async with response:
            result: dict[str, Any] = self._decode(await response.read())
        return result


def reserved_lora_rank(plan: VllmPlan) -> int:
    """The --max-lora-rank the plan gives vLLM (0: LoRA off): no hot-loaded adapter may exceed it."""
    argv = plan.argv
    return int(argv[argv.index("--max-lora-rank") + 1]) if "--max-lora-rank" in argv else 0


def _exit_process(code: int) -> None:
    # The event loop may be mid-request; a hard exit is the one way out that cannot hang on it.
    logging.shutdown()
    os._exit(EXIT_CHILD_DIED if code == 0 else min(max(code, 1), 255))
