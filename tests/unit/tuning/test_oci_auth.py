"""Docker config credentials, image references and the reproducible adapter layer."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from kaitopy.tuning.oci import (
    Credentials,
    OciError,
    build_layer,
    credentials_for,
    image_config,
    parse_image,
    read_docker_config,
)


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def test_auth_field() -> None:
    config = {"auths": {"myacr.azurecr.io": {"auth": _b64("user:pa:ss")}}}
    assert credentials_for(config, "myacr.azurecr.io") == Credentials("user", "pa:ss")


def test_username_password_fields() -> None:
    config = {"auths": {"https://ghcr.io": {"username": "u", "password": "p"}}}
    assert credentials_for(config, "ghcr.io") == Credentials("u", "p")


def test_docker_hub_aliases() -> None:
    config = {"auths": {"https://index.docker.io/v1/": {"auth": _b64("hub:pw")}}}
    assert credentials_for(config, "docker.io") == Credentials("hub", "pw")


def test_port_and_scheme_in_key() -> None:
    config = {"auths": {"http://127.0.0.1:5000": {"auth": _b64("a:b")}}}
    assert credentials_for(config, "127.0.0.1:5000") == Credentials("a", "b")
    assert credentials_for(config, "127.0.0.1:5001") is None


def test_legacy_dockercfg_layout() -> None:
    config = {"https://r.io": {"auth": _b64("old:style"), "email": "x@y"}}
    assert credentials_for(config, "r.io") == Credentials("old", "style")


def test_no_entry_for_registry() -> None:
    assert credentials_for({"auths": {"other.io": {"auth": _b64("a:b")}}}, "mine.io") is None
    assert credentials_for({}, "mine.io") is None


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"auth": "!!!not base64"}, "not base64"),
        ({"auth": _b64("no-colon")}, "does not decode to user:password"),
        ({"email": "x@y"}, "neither auth nor username/password"),
        ("string", "must be a mapping"),
    ],
)
def test_bad_entries(entry: object, problem: str) -> None:
    with pytest.raises(OciError, match=problem):
        credentials_for({"auths": {"r.io": entry}}, "r.io", "secret.json")


def test_read_docker_config_errors(tmp_path: Path) -> None:
    path = tmp_path / ".dockerconfigjson"
    path.write_text("{nope")
    with pytest.raises(OciError, match="not valid JSON"):
        read_docker_config(path)
    path.write_text("[]")
    with pytest.raises(OciError, match="JSON object"):
        read_docker_config(path)
    with pytest.raises(OciError, match="cannot read"):
        read_docker_config(tmp_path / "missing")


def test_parse_image() -> None:
    pytest.importorskip("oras", reason="oras comes with the tuning extra")
    ref = parse_image("127.0.0.1:5000/adapters/phi:v1")
    assert (ref.registry, ref.repository, ref.reference) == ("127.0.0.1:5000", "adapters/phi", "v1")
    hub = parse_image("adapter")
    assert (hub.api_host, hub.repository) == ("registry-1.docker.io", "library/adapter")
    assert hub.reference == "latest"
    digest = "sha256:" + "a" * 64
    assert parse_image(f"r.io/x@{digest}").reference == digest


def _adapter(dir_: Path) -> Path:
    dir_.mkdir()
    (dir_ / "adapter_config.json").write_text('{"r": 8}')
    (dir_ / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 10)
    (dir_ / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (dir_ / "checkpoints" / "checkpoint-4" / "optimizer.pt").write_bytes(b"x")
    (dir_ / "nested").mkdir()
    (dir_ / "nested" / "extra.txt").write_text("n")
    return dir_


def test_layer_is_reproducible_and_holds_data_paths(tmp_path: Path) -> None:
    src = _adapter(tmp_path / "adapter")
    (tmp_path / "w1").mkdir()
    (tmp_path / "w2").mkdir()
    path1, diff1, digest1, size1 = build_layer(src, tmp_path / "w1")
    os.utime(src / "adapter_config.json", (1_000_000, 1_000_000))  # another mtime changes nothing
    _, diff2, digest2, _ = build_layer(src, tmp_path / "w2")
    assert (diff1, digest1) == (diff2, digest2)
    assert digest1 == "sha256:" + hashlib.sha256(path1.read_bytes()).hexdigest()
    assert size1 == path1.stat().st_size
    raw = gzip.decompress(path1.read_bytes())
    assert diff1 == "sha256:" + hashlib.sha256(raw).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        names = tar.getnames()
        assert names == [
            "data",
            "data/adapter_config.json",
            "data/adapter_model.safetensors",
            "data/nested",
            "data/nested/extra.txt",
        ]
        member = tar.getmember("data/adapter_model.safetensors")
        assert (member.uid, member.gid, member.mode, member.mtime) == (0, 0, 0o644, 0)


def test_empty_dir_has_nothing_to_push(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(OciError, match="no files"):
        build_layer(tmp_path / "src", tmp_path)


def test_image_config_is_a_runnable_image_config() -> None:
    config = json.loads(image_config("sha256:" + "b" * 64, "amd64"))
    assert config["os"] == "linux" and config["architecture"] == "amd64"
    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + "b" * 64]}


def test_adapter_root(tmp_path: Path) -> None:
    from kaitopy.tuning.oci import adapter_root

    results = tmp_path / "results"
    (results / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (results / "checkpoints" / "checkpoint-2" / "adapter_config.json").write_text("{}")
    with pytest.raises(OciError, match=r"has no adapter_config\.json"):
        adapter_root(results)
    (results / "adapter").mkdir()
    (results / "adapter" / "adapter_config.json").write_text("{}")
    assert adapter_root(results) == results / "adapter"  # output_dir: adapter
    (results / "adapter_config.json").write_text("{}")
    assert adapter_root(results) == results
    (results / "adapter_config.json").unlink()
    (results / "other").mkdir()
    (results / "other" / "adapter_config.json").write_text("{}")
    with pytest.raises(OciError, match="several adapters"):
        adapter_root(results)


def _layer(tmp_path: Path, entries: list[tuple[str, bytes | None, str | None]]) -> Path:
    """A gzip layer with (name, content or None for a directory, symlink target) entries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content, link in entries:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            elif content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(gzip.compress(buf.getvalue()))
    return path


def test_extract_takes_only_data_like_cp_r(tmp_path: Path) -> None:
    from kaitopy.tuning.oci import LAYER_TYPE, extract_layer

    layer = _layer(
        tmp_path,
        [
            ("bin/busybox", b"elf", None),
            ("./data/", None, None),
            ("./data/adapter_config.json", b"{}", None),
            ("data/sub/w.bin", b"w", None),
            ("data/link", None, "/etc/passwd"),
        ],
    )
    dest = tmp_path / "dest"
    written, _ = extract_layer(layer, LAYER_TYPE, dest, None, 1 << 20)
    assert sorted(str(p.relative_to(dest)) for p in written) == ["adapter_config.json", "sub/w.bin"]
    assert not (dest / "link").exists() and not (dest / "bin").exists()


def test_extract_refuses_escaping_paths(tmp_path: Path) -> None:
    from kaitopy.tuning.oci import LAYER_TYPE, extract_layer

    layer = _layer(tmp_path, [("data/../../evil", b"x", None)])
    with pytest.raises(OciError, match="escapes /data"):
        extract_layer(layer, LAYER_TYPE, tmp_path / "dest", None, 1 << 20)
    assert not (tmp_path / "evil").exists()


def test_extract_checks_the_diff_id(tmp_path: Path) -> None:
    from kaitopy.tuning.oci import LAYER_TYPE, extract_layer

    layer = _layer(tmp_path, [("data/a", b"x", None)])
    with pytest.raises(OciError, match="does not match the config's diff_id"):
        extract_layer(layer, LAYER_TYPE, tmp_path / "dest", "sha256:" + "0" * 64, 1 << 20)
