"""The transformers engine: one model (plus LoRA adapters through peft) generating in a worker thread.

Generation runs one request at a time in a single thread (torch releases the GIL, so the event loop
keeps answering /health and queueing requests meanwhile). Adapters share the base weights: a request
for an adapter activates it, a request for the base model runs with every adapter disabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaitopy.inference import adapters as adapter_files
from kaitopy.inference import protocol
from kaitopy.inference.engine import EngineResult, RequestError, unknown_model
from kaitopy.inference.protocol import Sampling
from kaitopy.inference.settings import ServeSettings, SettingsError
from kaitopy.inference.textstream import REPLACEMENT, IncrementalDetokenizer, StopTextBuffer
from kaitopy.inference.weights import ensure_weights

log = logging.getLogger(__name__)

DEFAULT_MAX_MODEL_LEN = 2048
# from_pretrained options an inference_config.yaml `transformers:` section may set.
_TOKENIZER_OPTIONS = frozenset({"trust_remote_code", "revision"})
_LOAD_OPTIONS = frozenset({"trust_remote_code", "attn_implementation", "revision", "low_cpu_mem_usage"})


@dataclass
class _Event:
    kind: str  # "text" | "done" | "error"
    text: str = ""
    finish_reason: str = ""
    completion_tokens: int = 0
    error: BaseException | None = None


@dataclass
class _Job:
    prompt_ids: list[int]
    adapter: str | None
    sampling: Sampling
    max_new_tokens: int
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Loaded:
    model: Any  # the PeftModel when adapters loaded, else the base model
    tokenizer: Any
    device: Any
    adapters: list[str]
    has_peft: bool
    max_model_len: int
    eos_ids: set[int]
    defaults: dict[str, Any]  # sampling defaults the model's generation_config.json sets


def _dtype(name: str, cuda: bool) -> Any:
    import torch

    if name == "auto":
        # CPUs compute half precision slowly or not at all; a GPU takes what the checkpoint says.
        return "auto" if cuda else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _config_max_len(config: Any) -> int | None:
    for source in (config, getattr(config, "text_config", None)):
        value = getattr(source, "max_position_embeddings", None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _decode_prefix(tokenizer: Any, prompt_ids: list[int]) -> list[int]:
    """The last prompt tokens to decode generated text after: at least 4, more until they decode
    without a broken character (vLLM's incremental detokenizer primes itself the same way)."""
    for size in range(4, min(len(prompt_ids), 24) + 1):
        suffix = prompt_ids[-size:]
        if REPLACEMENT not in tokenizer.decode(suffix, skip_special_tokens=True):
            return suffix
    return prompt_ids[-4:]


class TransformersEngine:
    name = "transformers"

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self._loaded: _Loaded | None = None
        # One thread: generations run one after another, and adapter switching needs no lock. Hot
        # loads run on it too, between two generations.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        # Per adapter, each LoRA layer and its scaling at strength 1 (a strength is a multiple of it).
        self._scalings: dict[str, list[tuple[dict[str, float], float]]] = {}
        self._paths: dict[str, Path] = {}
        self._model_dir = settings.model_dir

    # --- lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loaded = await loop.run_in_executor(self._executor, self._load)

    async def stop(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def ready(self) -> bool:
        return self._loaded is not None

    def model_ids(self) -> list[str]:
        return [self.settings.served_model_name, *(self._loaded.adapters if self._loaded else [])]

    def extra_metrics(self) -> bytes:
        return b""

    def _load(self) -> _Loaded:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        settings = self.settings
        if settings.role == "worker":
            raise SettingsError(
                "the transformers engine runs on one node; multi-node serving needs --engine=vllm"
            )
        for flag, value in (
            ("--tool-call-parser", settings.tool_call_parser),
            ("--reasoning-parser", settings.reasoning_parser),
        ):
            if value:
                log.warning(
                    "%s %s is a vLLM option; the transformers engine returns the model's text as is",
                    flag,
                    value,
                )
        if settings.tensor_parallel_size * settings.pipeline_parallel_size > 1:
            log.info("the transformers engine spreads the model over every visible GPU (device_map=auto)")
        model_dir = self._model_dir = ensure_weights(settings)
        options = dict(settings.config.transformers)
        chat_template = options.pop("chat_template", None)
        unknown = sorted(set(options) - _LOAD_OPTIONS)
        if unknown:
            raise SettingsError(
                f"inference_config.yaml transformers: unknown option(s) {', '.join(unknown)}; "
                f"known: chat_template, {', '.join(sorted(_LOAD_OPTIONS))}"
            )
        cuda = torch.cuda.is_available()
        device = torch.device("cuda" if cuda else "cpu")
        started = time.monotonic()
        tokenizer_options = {k: v for k, v in options.items() if k in _TOKENIZER_OPTIONS}
        tokenizer = AutoTokenizer.from_pretrained(model_dir, **tokenizer_options)
        if chat_template:
            path = Path(str(chat_template))
            tokenizer.chat_template = path.read_text() if path.is_file() else str(chat_template)

        def load_base() -> Any:
            many_gpus = cuda and torch.cuda.device_count() > 1
            model: Any = AutoModelForCausalLM.from_pretrained(
                model_dir,
                dtype=_dtype(settings.dtype, cuda),
                device_map="auto" if many_gpus else None,
                **options,
            )
            if not many_gpus:
                model = model.to(device)
            return model.eval()

        base = load_base()
        log.info("loaded %s on %s (%s) in %.1f s", model_dir, device, base.dtype, time.monotonic() - started)
        model, names = self._load_adapters(base, load_base)
        max_len = settings.max_model_len or _config_max_len(base.config) or DEFAULT_MAX_MODEL_LEN
        gen = base.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
        eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        explicit = gen.to_diff_dict()
        defaults = {
            k: explicit[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty") if k in explicit
        }
        if explicit.get("do_sample") is False and "temperature" not in defaults:
            defaults["temperature"] = 0.0
        return _Loaded(model, tokenizer, device, names, bool(names), max_len, eos_ids, defaults)

    def _load_adapters(self, base: Any, load_base: Callable[[], Any]) -> tuple[Any, list[str]]:
        settings = self.settings
        module_names = [name for name, _ in base.named_modules()]
        specs = adapter_files.usable(
            adapter_files.discover(settings.adapter_dir), module_names, settings.served_model_name
        )
        if not specs:
            self._warn_unused_strengths([])
            return base, []
        from peft import PeftModel

        model: Any = None
        names: list[str] = []
        for spec in specs:
            try:
                if model is None:
                    model = PeftModel.from_pretrained(base, str(spec.path), adapter_name=spec.name)
                else:
                    model.load_adapter(str(spec.path), adapter_name=spec.name)
            except Exception as exc:
                # torch's size-mismatch report runs to one line per tensor; the first two say enough.
                reason = " ".join(str(exc).splitlines()[:2])
                log.error("adapter %s skipped: peft could not load it: %s", spec.name, reason)
                if model is None:
                    # peft may have wrapped layers of the base model before failing: start clean.
                    base = load_base()
                else:
                    with contextlib.suppress(Exception):
                        model.delete_adapter(spec.name)
                continue
            strength = settings.adapter_strengths.get(spec.name, 1.0)
            self._record_scalings(model, spec.name)
            self._set_strength(spec.name, strength)
            self._paths[spec.name] = spec.path
            names.append(spec.name)
            log.info("adapter %s loaded from %s (strength %g)", spec.name, spec.path, strength)
        self._warn_unused_strengths(names)
        if model is None:
            return base, []
        model.eval()
        return model, names

    def _warn_unused_strengths(self, names: list[str]) -> None:
        for name in sorted(set(self.settings.adapter_strengths) - set(names)):
            log.warning("--adapter-strength %s: no adapter of that name is served", name)

    def _record_scalings(self, model: Any, adapter: str) -> None:
        layers: list[tuple[dict[str, float], float]] = []
        for module in model.modules():
            scaling = getattr(module, "scaling", None)
            if isinstance(scaling, dict) and adapter in scaling:
                layers.append((scaling, float(scaling[adapter])))
        self._scalings[adapter] = layers

    def _set_strength(self, adapter: str, factor: float) -> None:
        # LoRA adds scaling * B @ A; multiplying each layer's scaling scales the adapter's effect.
        for scaling, at_one in self._scalings.get(adapter, []):
            scaling[adapter] = at_one * factor

    # --- hot-load (hotload.AdapterManager calls these; they run on the generation thread)

    async def load_adapter(self, name: str, path: Path, strength: float) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._hot_load, name, path, strength)

    async def unload_adapter(self, name: str) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._hot_unload, name)

    def _hot_load(self, name: str, path: Path, strength: float) -> None:
        from kaitopy.inference.vllm_args import adapter_shape_problem, base_weight_shapes

        state = self._state()
        if name in state.adapters and self._paths.get(name) == path:
            self._set_strength(name, strength)
            log.info("adapter %s: strength %g", name, strength)
            return
        base = state.model.get_base_model() if state.has_peft else state.model
        module_names = [n for n, _ in base.named_modules()]
        taken = [self.settings.served_model_name, *(a for a in state.adapters if a != name)]
        spec = adapter_files.check(path, module_names, taken)
        # Checked before peft touches the model: peft wraps layers in place before it finds a
        # tensor that does not fit, and the base model cannot be reloaded here.
        rank = spec.config.get("r")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise adapter_files.AdapterInvalid(f"rank r={rank!r} is not a positive integer")
        problem = adapter_shape_problem(path, rank, base_weight_shapes(self._model_dir))
        if problem is not None:
            raise adapter_files.AdapterInvalid(problem)
        if name in state.adapters:
            self._drop(state, name)
        try:
            if not state.has_peft:
                from peft import PeftModel

                state.model = PeftModel.from_pretrained(state.model, str(path), adapter_name=name)
                state.has_peft = True
            else:
                state.model.load_adapter(str(path), adapter_name=name)
        except Exception as exc:
            reason = " ".join(str(exc).splitlines()[:2])
            if state.has_peft and name in getattr(state.model, "peft_config", {}):
                with contextlib.suppress(Exception):
                    state.model.delete_adapter(name)
            raise adapter_files.AdapterInvalid(f"peft could not load it: {reason}") from None
        state.model.eval()
        self._record_scalings(state.model, name)
        self._set_strength(name, strength)
        self._paths[name] = path
        state.adapters.append(name)
        log.info("adapter %s loaded from %s (strength %g)", name, path, strength)

    def _hot_unload(self, name: str) -> None:
        state = self._state()
        if name in state.adapters:
            self._drop(state, name)
            log.info("adapter %s unloaded", name)

    def _drop(self, state: _Loaded, name: str) -> None:
        state.adapters.remove(name)
        self._scalings.pop(name, None)
        self._paths.pop(name, None)
        if state.adapters:
            state.model.delete_adapter(name)
            return
        # The last one: back to the plain model, LoRA layers removed (unmerged), as if none was loaded.
        state.model = state.model.unload().eval()
        state.has_peft = False

    # --- requests

    def _state(self) -> _Loaded:
        if self._loaded is None:
            raise RequestError("the model is still loading; retry later", status=503)
        return self._loaded

    def _adapter_for(self, body: dict[str, Any]) -> str | None:
        model = body.get("model", self.settings.served_model_name)
        if model == self.settings.served_model_name:
            return None
        if isinstance(model, str) and model in self._state().adapters:
            return model
        raise unknown_model(model, self.model_ids())

    def _chat_ids(self, body: dict[str, Any], messages: list[dict[str, Any]]) -> list[int]:
        tokenizer = self._state().tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise RequestError("this model has no chat template; use /v1/completions", param="messages")
        kwargs: dict[str, Any] = {}
        if isinstance(body.get("tools"), list):
            kwargs["tools"] = body["tools"]
        try:
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **kwargs
            )
        except Exception as exc:  # the template rejects the conversation (roles out of order, ...)
            raise RequestError(f"the chat template rejected the messages: {exc}", param="messages") from None
        ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        state = self._state()
        if isinstance(prompt, list):
            vocab = len(state.tokenizer)
            if any(t >= vocab for t in prompt):
                raise RequestError(f"token ids must be below the vocabulary size {vocab}", param="prompt")
            return prompt
        ids: list[int] = state.tokenizer(prompt)["input_ids"]
        return ids

    def _budget(self, prompt_len: int, sampling: Sampling, param: str) -> int:
        limit = self._state().max_model_len
        if prompt_len == 0:
            raise RequestError("the prompt is empty", param=param)
        # Without max_tokens: the server's default, or what the context has left when that is less.
        default = min(self.settings.default_max_tokens, max(limit - prompt_len, 0))
        wanted = sampling.max_tokens if sampling.max_tokens is not None else default
        if prompt_len + wanted > limit or wanted < 1:
            where = "messages" if param == "messages" else "prompt"
            raise RequestError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_len + max(wanted, 1)} tokens ({prompt_len} in the {where}, {max(wanted, 1)} in the "
                f"completion). Please reduce the length of the {where} or completion.",
                param=param,
                code="context_length_exceeded",
            )
        return wanted

    async def count_prompt_tokens(self, body: dict[str, Any]) -> int:
        if "messages" in body:
            messages = protocol.parse_messages(body)
            return len(await asyncio.to_thread(self._chat_ids, body, messages))
        prompt = protocol.parse_prompt(body)
        return len(await asyncio.to_thread(self._prompt_ids, prompt))

    async def chat_completion(self, body: dict[str, Any]) -> EngineResult:
        sampling = protocol.parse_sampling(body)
        adapter = self._adapter_for(body)
        messages = protocol.parse_messages(body)
        ids = await asyncio.to_thread(self._chat_ids, body, messages)
        job = _Job(ids, adapter, sampling, self._budget(len(ids), sampling, "messages"))
        model = str(body.get("model", self.settings.served_model_name))
        rid = protocol.request_id("chatcmpl")
        if sampling.stream:
            return self._chat_stream(job, rid, model)
        text, finish, produced = await self._collect(job)
        return protocol.chat_response(rid, model, text, finish, len(ids), produced)

    async def completion(self, body: dict[str, Any]) -> EngineResult:
        sampling = protocol.parse_sampling(body)
        adapter = self._adapter_for(body)
        prompt = protocol.parse_prompt(body)
        ids = await asyncio.to_thread(self._prompt_ids, prompt)
        job = _Job(ids, adapter, sampling, self._budget(len(ids), sampling, "prompt"))
        model = str(body.get("model", self.settings.served_model_name))
        rid = protocol.request_id("cmpl")
        if sampling.stream:
            return self._completion_stream(job, rid, model)
        text, finish, produced = await self._collect(job)
        return protocol.completion_response(rid, model, text, finish, len(ids), produced)

    async def _collect(self, job: _Job) -> tuple[str, str, int]:
        parts: list[str] = []
        async with contextlib.aclosing(self._events(job)) as events:
            async for event in events:
                if event.kind == "text":
                    parts.append(event.text)
                elif event.kind == "done":
                    return "".join(parts), event.finish_reason, event.completion_tokens
        raise RuntimeError("generation ended without a result")

    async def _chat_stream(self, job: _Job, rid: str, model: str) -> AsyncIterator[dict[str, Any]]:
        created = int(time.time())
        yield protocol.chat_chunk(rid, model, created, {"role": "assistant", "content": ""})
        async with contextlib.aclosing(self._events(job)) as events:
            async for event in events:
                if event.kind == "text":
                    yield protocol.chat_chunk(rid, model, created, {"content": event.text})
                elif event.kind == "done":
                    yield protocol.chat_chunk(rid, model, created, {}, event.finish_reason)
                    if job.sampling.include_usage:
                        yield protocol.usage_chunk(
                            rid,
                            model,
                            created,
                            "chat.completion.chunk",
                            len(job.prompt_ids),
                            event.completion_tokens,
                        )

    async def _completion_stream(self, job: _Job, rid: str, model: str) -> AsyncIterator[dict[str, Any]]:
        created = int(time.time())
        async with contextlib.aclosing(self._events(job)) as events:
            async for event in events:
                if event.kind == "text":
                    yield protocol.completion_chunk(rid, model, created, event.text)
                elif event.kind == "done":
                    yield protocol.completion_chunk(rid, model, created, "", event.finish_reason)
                    if job.sampling.include_usage:
                        yield protocol.usage_chunk(
                            rid,
                            model,
                            created,
                            "text_completion",
                            len(job.prompt_ids),
                            event.completion_tokens,
                        )

    async def _events(self, job: _Job) -> AsyncGenerator[_Event]:
        """The job's events as the worker thread produces them. Leaving early (a client that hung up,
        a cancelled request) tells the thread to stop at the next token."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Event] = asyncio.Queue()

        def emit(event: _Event) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening any more
                loop.call_soon_threadsafe(queue.put_nowait, event)

        loop.run_in_executor(self._executor, self._generate, job, emit)
        try:
            while True:
                event = await queue.get()
                if event.kind == "error":
                    assert event.error is not None
                    raise event.error
                yield event
                if event.kind == "done":
                    return
        finally:
            job.cancel.set()

    # --- the worker thread

    def _generate(self, job: _Job, emit: Callable[[_Event], None]) -> None:
        try:
            if job.cancel.is_set():
                emit(_Event("done", finish_reason="abort"))
                return
            self._run(job, emit)
        except BaseException as exc:
            log.exception("generation failed")
            emit(_Event("error", error=exc))

    @contextlib.contextmanager
    def _adapter(self, state: _Loaded, adapter: str | None) -> Iterator[None]:
        if not state.has_peft:
            yield
        elif adapter is None:
            with state.model.disable_adapter():
                yield
        else:
            state.model.set_adapter(adapter)
            yield

    def _generation_config(self, state: _Loaded, job: _Job) -> Any:
        from transformers import GenerationConfig

        sampling = job.sampling
        pick = state.defaults

        temperature = (
            sampling.temperature if sampling.temperature is not None else pick.get("temperature", 1.0)
        )
        options: dict[str, Any] = {
            "max_new_tokens": job.max_new_tokens,
            "eos_token_id": sorted(state.eos_ids) or None,
            "pad_token_id": state.tokenizer.pad_token_id,
            "repetition_penalty": sampling.repetition_penalty or pick.get("repetition_penalty", 1.0),
            # generate() keeps end-of-sequence tokens out until this many were produced.
            "min_new_tokens": job.max_new_tokens
            if sampling.ignore_eos
            else min(sampling.min_tokens, job.max_new_tokens),
        }
        if not temperature:
            options |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        else:
            top_k = sampling.top_k if sampling.top_k is not None else pick.get("top_k")
            options |= {
                "do_sample": True,
                "temperature": temperature,
                "top_p": sampling.top_p if sampling.top_p is not None else pick.get("top_p", 1.0),
                "top_k": top_k or 0,
            }
        config: Any = GenerationConfig
        return config(**options)

    def _run(self, job: _Job, emit: Callable[[_Event], None]) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        state = self._state()
        tokenizer = state.tokenizer
        buffer = StopTextBuffer(job.sampling.stop)
        generated: list[int] = []
        # Decoded after a few prompt tokens, so a word's leading space survives (as vLLM does).
        detokenizer = IncrementalDetokenizer(
            lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True)),
            _decode_prefix(tokenizer, job.prompt_ids),
        )

        class Streamer:
            """generate()'s streamer: first the prompt, then one token per step."""

            prompt_seen = False

            def put(self, value: Any) -> None:
                if not self.prompt_seen:
                    self.prompt_seen = True
                    return
                for token in value.reshape(-1).tolist():
                    generated.append(int(token))
                    detokenizer.add(int(token))
                delta = buffer.feed(detokenizer.text)
                if delta:
                    emit(_Event("text", text=delta))

            def end(self) -> None:
                pass

        class Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                done = job.cancel.is_set() or buffer.stopped
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        if job.sampling.seed is not None:
            torch.manual_seed(job.sampling.seed)
        input_ids = torch.tensor([job.prompt_ids], dtype=torch.long, device=state.device)
        with torch.inference_mode(), self._adapter(state, job.adapter):
            state.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=self._generation_config(state, job),
                streamer=Streamer(),
                stopping_criteria=StoppingCriteriaList([Stop()]),
            )
        tail = buffer.finish(detokenizer.text)
        if tail:
            emit(_Event("text", text=tail))
        if buffer.stopped or (generated and generated[-1] in state.eos_ids):
            finish = "stop"
        elif job.cancel.is_set():
            finish = "abort"
            log.info(
                "generation stopped after %d of %d tokens: the request went away",
                len(generated),
                job.max_new_tokens,
            )
        else:
            finish = "length"
        emit(_Event("done", finish_reason=finish, completion_tokens=len(generated)))
