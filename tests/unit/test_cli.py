from __future__ import annotations

import subprocess
import sys

import pytest

from kaitopy import __version__
from kaitopy.cli import main


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "version" in capsys.readouterr().out


def test_version_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == __version__


def test_console_entry_point_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "kaitopy", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: kaitopy")


def test_webhook_subcommand_is_registered(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["webhook", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--url" in out and "--service-name" in out
