"""hack/leftovers.py, which `.ci/run` calls after the suite: it finds what is ours and only that."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import time
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "hack" / "leftovers.py"


@pytest.fixture
def leftovers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kaitopy_hack_leftovers", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_process_under_a_marked_folder_is_reported_and_the_check_fails(
    leftovers: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "state").write_text("")
    monkeypatch.setattr(leftovers, "MARKERS", (str(ours),))
    monkeypatch.setattr(leftovers, "links", list)
    monkeypatch.setattr(leftovers, "pod_namespaces", list)
    assert leftovers.main() == 0

    tail = shutil.which("tail") or "/usr/bin/tail"
    proc = subprocess.Popen([tail, "-f", str(ours / "state")])
    try:
        for _ in range(200):  # until its exec is done and its command line shows
            if leftovers.processes():
                break
            time.sleep(0.01)
        assert leftovers.main() == 1
        assert f"leftover: process {proc.pid}: {tail} -f {ours / 'state'}" in capsys.readouterr().out
    finally:
        proc.kill()
        proc.wait()
    assert leftovers.main() == 0
