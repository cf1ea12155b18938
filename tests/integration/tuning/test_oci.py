"""Push and pull adapter images against a real registry (distribution 2.8) on loopback."""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaitopy.tuning.oci import OciError, pull, push
from tests.support import registry as registry_support

pytestmark = pytest.mark.skipif(
    not registry_support.available(),
    reason="needs Debian's docker-registry package (apt-get install docker-registry)",
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[registry_support.Registry]:
    with registry_support.run_registry(tmp_path_factory.mktemp("registry")) as r:
        yield r


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    src = tmp_path / "results"
    src.mkdir()
    (src / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    (src / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 4000)
    (src / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (src / "checkpoints" / "checkpoint-2" / "optimizer.pt").write_bytes(b"state")
    return src


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_push_then_pull_is_byte_identical(
    registry: registry_support.Registry, adapter: Path, tmp_path: Path
) -> None:
    config = registry.docker_config(tmp_path / ".dockerconfigjson")
    image = f"{registry.host}/adapters/tiny:v1"
    digest = push(adapter, image, config, plain_http=True)
    assert digest.startswith("sha256:")
    dest = tmp_path / "pulled"
    pull(image, dest, config, plain_http=True)
    expected = {k: v for k, v in _tree(adapter).items() if not k.startswith("checkpoints")}
    assert _tree(dest) == expected
    # By digest too, and pushing the same files again gives the same digest.
    pull(f"{registry.host}/adapters/tiny@{digest}", tmp_path / "by-digest", config, plain_http=True)
    assert _tree(tmp_path / "by-digest") == expected
    assert push(adapter, f"{registry.host}/adapters/tiny:v1-again", config, plain_http=True) == digest


def test_wrong_password_is_a_clear_error(
    registry: registry_support.Registry, adapter: Path, tmp_path: Path
) -> None:
    bad = registry.docker_config(tmp_path / "bad.json", password="wrong")
    with pytest.raises(
        OciError,
        match=re.escape(f"registry {registry.host} rejected the credentials of user 'tuner' (HTTP 401)"),
    ):
        push(adapter, f"{registry.host}/adapters/tiny:bad", bad, plain_http=True)
    with pytest.raises(OciError, match="rejected the credentials"):
        pull(f"{registry.host}/adapters/tiny:v1", tmp_path / "x", bad, plain_http=True)


def test_no_credentials_for_the_registry(
    registry: registry_support.Registry, adapter: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"auths": {"elsewhere.io": {"username": "a", "password": "b"}}}))
    with pytest.raises(OciError, match=r"requires credentials .* has none for it"):
        push(adapter, f"{registry.host}/adapters/tiny:anon", other, plain_http=True)


def test_missing_image(registry: registry_support.Registry, tmp_path: Path) -> None:
    config = registry.docker_config(tmp_path / ".dockerconfigjson")
    with pytest.raises(OciError, match="manifest not found"):
        pull(f"{registry.host}/adapters/none:v1", tmp_path / "x", config, plain_http=True)


def test_push_without_adapter(registry: registry_support.Registry, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(OciError, match=r"no adapter_config\.json"):
        push(tmp_path / "empty", f"{registry.host}/adapters/x:v1", None, plain_http=True)


def test_single_architecture_is_a_plain_manifest(
    registry: registry_support.Registry, adapter: Path, tmp_path: Path
) -> None:
    import urllib.request

    config = registry.docker_config(tmp_path / ".dockerconfigjson")
    digest = push(
        adapter, f"{registry.host}/adapters/one:v1", config, plain_http=True, architectures=("arm64",)
    )
    request = urllib.request.Request(
        f"http://{registry.host}/v2/adapters/one/manifests/v1",
        headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
            "Authorization": "Basic "
            + base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode(),
        },
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.headers["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
        assert resp.headers["Docker-Content-Digest"] == digest
    dest = tmp_path / "one"
    pull(f"{registry.host}/adapters/one:v1", dest, config, plain_http=True)
    assert (dest / "adapter_config.json").is_file()


def test_cli_push_and_pull(registry: registry_support.Registry, adapter: Path, tmp_path: Path) -> None:
    config = registry.docker_config(tmp_path / ".dockerconfigjson")
    image = f"{registry.host}/adapters/cli:v1"
    tune = [sys.executable, "-m", "kaitopy", "tune"]
    pushed = subprocess.run(
        [*tune, "push", f"--dir={adapter}", f"--image={image}", f"--docker-config={config}", "--plain-http"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.strip().startswith(f"{image}@sha256:")
    dest = tmp_path / "cli-pulled"
    pulled = subprocess.run(
        [*tune, "pull", f"--image={image}", f"--dest={dest}", f"--docker-config={config}", "--plain-http"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pulled.returncode == 0, pulled.stderr
    assert (dest / "adapter_model.safetensors").read_bytes() == (
        adapter / "adapter_model.safetensors"
    ).read_bytes()
    pull_args = [f"--image={image}", f"--dest={tmp_path / 'capped'}", f"--docker-config={config}"]
    capped = subprocess.run(
        [*tune, "pull", *pull_args, "--plain-http", "--max-bytes=100000"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert capped.returncode == 1
    assert "expands to more than the limit of 100000 bytes" in capped.stderr, capped.stderr
    bad = registry.docker_config(tmp_path / "bad.json", password="nope")
    failed = subprocess.run(
        [*tune, "push", f"--dir={adapter}", f"--image={image}", f"--docker-config={bad}", "--plain-http"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 1
    assert "rejected the credentials of user 'tuner'" in failed.stderr


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
def test_skopeo_sees_a_proper_image(
    registry: registry_support.Registry, adapter: Path, tmp_path: Path
) -> None:
    config = registry.docker_config(tmp_path / ".dockerconfigjson")
    image = f"{registry.host}/adapters/skopeo:v1"
    push(adapter, image, config, plain_http=True)
    creds = f"{registry.username}:{registry.password}"
    inspect = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--creds", creds, f"docker://{image}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    info = json.loads(inspect.stdout)
    assert (info["Os"], info["Architecture"], len(info["Layers"])) == ("linux", "amd64", 1)
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", creds, f"docker://{image}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    index = json.loads(raw.stdout)
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert sorted(m["platform"]["architecture"] for m in index["manifests"]) == ["amd64", "arm64"]
    # An arm64 node resolves the index to its own manifest, with the same layer.
    arm = subprocess.run(
        [
            "skopeo",
            "--override-arch=arm64",
            "inspect",
            "--tls-verify=false",
            "--creds",
            creds,
            f"docker://{image}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(arm.stdout)["Architecture"] == "arm64"
    assert json.loads(arm.stdout)["Layers"] == info["Layers"]
    # A copy into an OCI layout checks every digest on the way, as a container runtime's pull does.
    layout = tmp_path / "layout"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            creds,
            f"docker://{image}",
            f"oci:{layout}:v1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_digest).read_text())
    layer = (layout / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":", 1)[1]).read_bytes()
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        assert "data/adapter_model.safetensors" in tar.getnames()


def test_a_gzip_bomb_layer_fails_fast_in_bounded_memory(
    registry: registry_support.Registry, tmp_path: Path
) -> None:
    """A 1 MiB layer that inflates to 1 GiB, in a real registry: the pull stops at its cap with an
    error naming the image and the limit, holding about one chunk at a time (it used to inflate
    the whole layer in memory: 2 GiB for this one)."""
    import hashlib
    import time
    import tracemalloc

    from kaitopy.tuning.oci import (
        CONFIG_TYPE,
        LAYER_TYPE,
        MANIFEST_TYPE,
        RegistrySession,
        _put_manifest,
        _upload_blob,
        parse_image,
        resolve_credentials,
    )
    from tests.support.gzipbomb import gzip_bomb

    image = f"{registry.host}/adapters/bomb:1"
    ref = parse_image(image)
    config_path = registry.docker_config(tmp_path / "config.json")
    session = RegistrySession(ref, resolve_credentials(config_path, ref), plain_http=True)
    layer = gzip_bomb(tmp_path / "layer.tar.gz", 1 << 30)
    assert layer.stat().st_size < 1100 * 1024
    layer_desc = {
        "mediaType": LAYER_TYPE,
        "digest": f"sha256:{hashlib.sha256(layer.read_bytes()).hexdigest()}",
        "size": layer.stat().st_size,
    }
    _upload_blob(session, layer, layer_desc, "layer")
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    (tmp_path / "image-config.json").write_bytes(config)
    config_desc = {
        "mediaType": CONFIG_TYPE,
        "digest": f"sha256:{hashlib.sha256(config).hexdigest()}",
        "size": len(config),
    }
    _upload_blob(session, tmp_path / "image-config.json", config_desc, "config")
    manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "config": config_desc, "layers": [layer_desc]}
    ).encode()
    _put_manifest(session, "1", manifest, MANIFEST_TYPE, "the manifest")

    cap = 64 << 20
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(OciError) as err:
            pull(image, tmp_path / "out", config_path, plain_http=True, max_bytes=cap)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(err.value).startswith(f"{image}: layer layer-0 expands to more than the limit of {cap} bytes")
    assert f"(all layers together may expand to {cap} bytes)" in str(err.value)
    assert peak < 32 << 20, peak
    assert time.monotonic() - started < 60
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
