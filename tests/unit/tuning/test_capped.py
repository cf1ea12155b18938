"""Capped streaming decompression of layers: a real gzip bomb fails fast, in bounded memory."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import time
import tracemalloc
from pathlib import Path

import pytest

from kaitopy.tuning.capped import CappedReader, TooLarge
from kaitopy.tuning.oci import LAYER_TYPE, OciError, extract_layer
from tests.support.gzipbomb import gzip_bomb

MiB = 1 << 20


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = gzip_bomb(tmp_path_factory.mktemp("bomb") / "layer", 1024 * MiB)
    assert path.stat().st_size <= 1100 * 1024  # about 1 MiB on disk, 1 GiB expanded
    return path


def test_a_gzip_bomb_layer_stops_at_the_cap_in_bounded_memory(bomb: Path, tmp_path: Path) -> None:
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(TooLarge, match=f"expands to more than the limit of {64 * MiB} bytes"):
            extract_layer(bomb, LAYER_TYPE, tmp_path / "dest", None, 64 * MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # It stopped after the cap, not after the whole gigabyte; and held about one chunk at a time
    # (gzip.decompress would have held 1 GiB). The bound is loose: it catches whole-blob reads.
    assert peak < 16 * MiB, peak
    assert time.monotonic() - started < 30
    assert not [p for p in (tmp_path / "dest").rglob("*") if p.is_file()]


def test_the_diff_id_pass_is_capped_too(bomb: Path, tmp_path: Path) -> None:
    with pytest.raises(TooLarge):
        extract_layer(bomb, LAYER_TYPE, tmp_path / "dest", "sha256:" + "0" * 64, 8 * MiB)


def test_the_stream_equals_gzip_decompress_and_hashes_what_it_read() -> None:
    data = os.urandom(3 * MiB + 17) + bytes(2 * MiB)
    # Two members back to back, as gzip allows (and `cat a.gz b.gz` makes).
    blob = gzip.compress(data[:MiB]) + gzip.compress(data[MiB:])
    reader = CappedReader(io.BytesIO(blob), len(data), gzipped=True, what="layer x")
    out = io.BufferedReader(reader).read()
    assert out == data == gzip.decompress(blob)
    assert reader.digest() == f"sha256:{hashlib.sha256(data).hexdigest()}"
    with pytest.raises(TooLarge, match=f"layer x expands to more than the limit of {len(data) - 1} bytes"):
        io.BufferedReader(CappedReader(io.BytesIO(blob), len(data) - 1, gzipped=True, what="layer x")).read()


def test_plain_tar_layers_are_capped_and_broken_gzip_is_named() -> None:
    with pytest.raises(TooLarge):
        io.BufferedReader(CappedReader(io.BytesIO(bytes(5000)), 4096, gzipped=False, what="l")).read()
    truncated = gzip.compress(os.urandom(10000))[:-100]
    with pytest.raises(ValueError, match="not valid gzip"):
        io.BufferedReader(CappedReader(io.BytesIO(truncated), MiB, gzipped=True, what="l")).read()


def test_a_layer_under_the_cap_extracts(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("data/adapter_model.safetensors")
        payload = os.urandom(2 * MiB)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    layer = tmp_path / "layer"
    layer.write_bytes(gzip.compress(buf.getvalue()))
    diff_id = f"sha256:{hashlib.sha256(buf.getvalue()).hexdigest()}"
    files, size = extract_layer(layer, LAYER_TYPE, tmp_path / "dest", diff_id, len(buf.getvalue()))
    assert [f.read_bytes() for f in files] == [payload]
    assert size == len(buf.getvalue())
    with pytest.raises(OciError, match="diff_id"):
        extract_layer(layer, LAYER_TYPE, tmp_path / "d2", "sha256:" + "1" * 64, 10 * MiB)
