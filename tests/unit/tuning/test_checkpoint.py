"""Which checkpoint a restarted run resumes from."""

from __future__ import annotations

import json
from pathlib import Path

from kaitopy.tuning.checkpoint import STATE, checkpoints_dir, latest


def _checkpoint(out: Path, step: int, fingerprint: str | None, state: str | None = None) -> Path:
    path = checkpoints_dir(out) / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if state is not None:
        (path / STATE).write_text(state)
    elif fingerprint is not None:
        (path / STATE).write_text(json.dumps({"fingerprint": fingerprint, "step": step}))
    return path


def test_no_checkpoints(tmp_path: Path) -> None:
    assert latest(tmp_path, "fp") is None


def test_newest_complete_checkpoint_wins(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 10, "fp")
    _checkpoint(tmp_path, 20, "fp")
    _checkpoint(tmp_path, 30, None)  # killed while saving: no state file
    (checkpoints_dir(tmp_path) / ".checkpoint-40.tmp").mkdir()
    _checkpoint(tmp_path, 25, None, state="{broken")
    found = latest(tmp_path, "fp")
    assert found is not None and found.step == 20 and found.state["fingerprint"] == "fp"


def test_checkpoints_of_other_settings_are_removed(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 100, "old")
    _checkpoint(tmp_path, 10, "new")
    assert latest(tmp_path, "new") is None
    assert not checkpoints_dir(tmp_path).exists()
