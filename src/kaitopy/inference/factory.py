"""Which engine serves: the one place that knows every engine by name. Each engine's module is imported
only when chosen, so the transformers image needs no vLLM and the other way round."""

from __future__ import annotations

import importlib

from kaitopy.inference.engine import Engine
from kaitopy.inference.settings import ServeSettings, SettingsError


def build_engine(settings: ServeSettings) -> Engine:
    if settings.engine == "transformers":
        from kaitopy.inference.transformers_engine import TransformersEngine

        return TransformersEngine(settings)
    if settings.engine == "vllm":
        try:
            module = importlib.import_module("kaitopy.inference.vllm_engine")
        except ModuleNotFoundError as exc:
            raise SettingsError(
                f"--engine=vllm: {exc.name} is not installed in this image; install kaitopy[inference] "
                "(vLLM needs a CUDA machine) or use --engine=transformers"
            ) from None
        engine: Engine = module.VllmEngine(settings)
        return engine
    raise SettingsError(f"--engine {settings.engine!r}: expected transformers or vllm")
