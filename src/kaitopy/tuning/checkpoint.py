"""Checkpoints of a LoRA run: the adapter weights, optimizer and scheduler state, and the step.

A checkpoint is written to a temporary directory and renamed into place, so a pod killed while
saving leaves the previous checkpoint as the newest complete one. A checkpoint records a
fingerprint of the configuration and the data; one made for other settings is never resumed.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DIR = "checkpoints"
_NAME = re.compile(r"^checkpoint-(\d+)$")
STATE = "trainer_state.json"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    state: dict[str, Any]


def checkpoints_dir(output_dir: Path) -> Path:
    return output_dir / DIR


def latest(output_dir: Path, fingerprint: str) -> Checkpoint | None:
    """The newest complete checkpoint made with the same settings, if any."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return None
    found: list[tuple[int, Path]] = []
    for child in root.iterdir():
        match = _NAME.match(child.name)
        if match and (child / STATE).is_file():
            found.append((int(match.group(1)), child))
    for step, path in sorted(found, reverse=True):
        try:
            state = json.loads((path / STATE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("ignoring checkpoint %s: unreadable state (%s)", path, exc)
            continue
        if state.get("fingerprint") != fingerprint:
            # Never resumable, and left in place their step numbers would outrank the new run's.
            log.warning(
                "removing checkpoints made for other settings or data (newest: %s); starting over", path
            )
            shutil.rmtree(root, ignore_errors=True)
            return None
        return Checkpoint(path, step, state)
    return None


def save(
    model: Any,
    optimizer: Any,
    scheduler: Any,
    output_dir: Path,
    step: int,
    state: dict[str, Any],
    keep: int | None,
) -> Path:
    import torch

    root = checkpoints_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"checkpoint-{step}"
    tmp = root / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(tmp, safe_serialization=True)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save({"cpu": torch.get_rng_state()}, tmp / "rng.pt")
    (tmp / STATE).write_text(json.dumps({**state, "step": step}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    if keep is not None:
        _prune(root, keep)
    log.info("saved checkpoint %s", final)
    return final


def _prune(root: Path, keep: int) -> None:
    steps = sorted(
        (int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / STATE).is_file()
    )
    for _, path in steps[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def restore(model: Any, optimizer: Any, scheduler: Any, checkpoint: Checkpoint) -> None:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(checkpoint.path / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise RuntimeError(
            f"checkpoint {checkpoint.path} does not fit the model: unexpected {unexpected[:3]}"
        )
    optimizer.load_state_dict(torch.load(checkpoint.path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(checkpoint.path / "scheduler.pt", weights_only=True))
    rng = checkpoint.path / "rng.pt"
    if rng.is_file():
        torch.set_rng_state(torch.load(rng, weights_only=True)["cpu"])


def remove_all(output_dir: Path) -> None:
    shutil.rmtree(checkpoints_dir(output_dir), ignore_errors=True)
