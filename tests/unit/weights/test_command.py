"""`kaitopy weights`: flags, the plain-HTTP default, and one clear line on a refused pull."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaitopy.cli import main

pytestmark = pytest.mark.unit


def test_a_malformed_pin_fails_before_any_network(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["weights", "pull", "--image=127.0.0.1:9/m:v1", f"--dest={tmp_path / 'd'}", "--digest=sha256:XYZ"]
    )
    assert code == 1
    err = capfd.readouterr().err  # the command configures its own log handler, on stderr
    assert "pull failed" in err and "is not a sha256 digest" in err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("image", "flag", "plain"),
    [
        ("127.0.0.1:5000/m:v1", None, True),
        ("localhost:5000/m:v1", None, True),
        ("registry.example.com/m:v1", None, False),
        ("registry.example.com/m:v1", "--plain-http", True),
        ("127.0.0.1:5000/m:v1", "--no-plain-http", False),
    ],
)
def test_plain_http_defaults_to_loopback_only(image: str, flag: str | None, plain: bool) -> None:
    import argparse

    from kaitopy.weights.command import _plain_http, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["pull", f"--image={image}", "--dest=/tmp/x", *([flag] if flag else [])]
    assert _plain_http(parser.parse_args(argv)) is plain
