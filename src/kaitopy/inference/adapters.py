"""Finding the LoRA adapters under --adapter-dir and checking each before it touches the model.

Every subdirectory holding adapter_config.json is an adapter served under the directory's name. One
that cannot work (unreadable config, no weights, targets that match no layer of the base model) is
logged by name and skipped: one bad adapter must not keep the base model and the others from serving.
The checks run before peft sees the adapter because peft changes the model in place before it finds
out the weights are missing.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    path: Path
    config: dict[str, Any]


class AdapterInvalid(ValueError):
    """Why an adapter directory cannot be served."""


def discover(adapter_dir: Path | None) -> list[Path]:
    """The adapter directories, sorted by name (so the served order is stable).

    --adapter-dir pointing at one adapter (its own adapter_config.json, as `kaitopy tune pull --dest`
    leaves it) serves that adapter under the directory's name; a directory with files but no adapter
    is said so, rather than serving nothing in silence.
    """
    if adapter_dir is None or not adapter_dir.is_dir():
        return []
    found = sorted(p for p in adapter_dir.iterdir() if p.is_dir() and (p / "adapter_config.json").is_file())
    if not found and (adapter_dir / "adapter_config.json").is_file():
        log.info(
            "--adapter-dir %s is itself an adapter: serving it as %s", adapter_dir, adapter_dir.resolve().name
        )
        return [adapter_dir]
    if not found and any(adapter_dir.iterdir()):
        log.warning(
            "--adapter-dir %s holds no adapter: expected one subdirectory per adapter, each with an "
            "adapter_config.json (or the directory itself to be one adapter)",
            adapter_dir,
        )
    return found


def _targets_match(target: Any, module_names: list[str]) -> tuple[bool, list[str]]:
    """(whether the targets pick any module, the listed targets that match none), as peft matches them."""
    if target is None:
        return True, []  # peft falls back to the architecture's defaults
    if isinstance(target, str):
        if target == "all-linear":
            return True, []
        return any(re.fullmatch(target, name) for name in module_names), []
    if isinstance(target, list) and all(isinstance(t, str) for t in target):
        missing = [t for t in target if not any(n == t or n.endswith("." + t) for n in module_names)]
        return len(missing) < len(target), missing
    raise AdapterInvalid(f"target_modules must be a string or a list of strings, not {target!r}")


def _check_weights(path: Path) -> None:
    weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
    if weights is None:
        raise AdapterInvalid(f"no weights: expected {' or '.join(WEIGHT_FILES)}")
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(weights), framework="pt") as f:
                keys = list(f.keys())
        except Exception as exc:
            raise AdapterInvalid(f"{weights.name} is not a readable safetensors file: {exc}") from None
        if not any("lora_" in k for k in keys):
            raise AdapterInvalid(f"{weights.name} holds no LoRA weights")


def check(path: Path, module_names: list[str], taken: Iterable[str]) -> AdapterSpec:
    """The adapter at `path`, or AdapterInvalid saying why it cannot be served."""
    name = path.resolve().name
    if name in set(taken):
        raise AdapterInvalid(f"the name {name!r} is already served")
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise AdapterInvalid(f"adapter_config.json is unreadable: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterInvalid("adapter_config.json must be a JSON object")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterInvalid(f"peft_type {peft_type} is not supported (only LoRA)")
    matched, missing = _targets_match(config.get("target_modules"), module_names)
    if not matched:
        raise AdapterInvalid(
            f"target_modules {config.get('target_modules')!r} match no layer of the base model"
        )
    if missing:
        log.warning("adapter %s: target modules %s match no layer of the base model", name, missing)
    _check_weights(path)
    return AdapterSpec(name=name, path=path, config=config)


def usable(paths: list[Path], module_names: list[str], base_name: str) -> list[AdapterSpec]:
    specs: list[AdapterSpec] = []
    for path in paths:
        try:
            specs.append(check(path, module_names, [base_name, *(s.name for s in specs)]))
        except AdapterInvalid as exc:
            log.error("adapter %s skipped: %s", path.name, exc)
    return specs
