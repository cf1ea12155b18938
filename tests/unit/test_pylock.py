"""requirements/*.lock: the images' Python environments, pinned with hashes, still satisfy what
pyproject.toml asks for (a dependency change without `hack/images.py lock` fails here); and the
image build wiring uses them (hash-checked download, the lock in the build context)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "hack"))
from imagelib import pylock, staging, wheels  # noqa: E402

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==(\S+) \\$")


def pins(lock: Path) -> dict[str, tuple[Version, list[str]]]:
    """name -> (version, hashes) from a `--generate-hashes` lock."""
    out: dict[str, tuple[Version, list[str]]] = {}
    current = ""
    for line in lock.read_text().splitlines():
        m = PIN.match(line)
        if m:
            current = re.sub(r"[-_.]+", "-", m.group(1)).lower()
            out[current] = (Version(m.group(2)), [])
        elif line.strip().startswith("--hash=sha256:") and current:
            out[current][1].append(line.strip().split(":", 1)[1].rstrip(" \\"))
        elif not line.startswith(" "):
            current = ""
    return out


@pytest.mark.parametrize("name", pylock.LOCKED)
def test_the_lock_satisfies_pyproject_and_pins_everything_with_hashes(name: str) -> None:
    lock = pylock.lock_path(name)
    pinned = pins(lock)
    assert pinned, f"{lock} pins nothing"
    for raw in pylock.requirements(name):
        req = Requirement(raw)
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        assert key in pinned, f"{lock}: {raw} is not pinned; run hack/images.py lock"
        version, _ = pinned[key]
        assert req.specifier.contains(version, prereleases=True), (
            f"{lock}: {key}=={version} does not satisfy {raw}; run hack/images.py lock"
        )
    for key, (_, hashes) in pinned.items():
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), key
    # Each pin is one line pip reads as a requirement: no unpinned or URL lines slipped in.
    body = [ln for ln in lock.read_text().splitlines() if ln and not ln.startswith((" ", "#"))]
    assert all(PIN.match(ln) for ln in body), [ln for ln in body if not PIN.match(ln)]
    # The .in beside it is what the lock was resolved from.
    source = lock.with_suffix(".in").read_text().splitlines()
    assert [ln for ln in source if not ln.startswith("#")] == pylock.requirements(name)


def test_the_cpu_model_server_pins_torchs_cpu_build() -> None:
    version, _ = pins(pylock.lock_path("model-server-cpu"))["torch"]
    assert str(version) == pylock.TORCH_VERSION


@pytest.mark.parametrize("image", ["controller", "runtime-cpu"])
def test_the_dockerfiles_install_from_the_lock_with_hashes_and_write_an_sbom(image: str) -> None:
    text = (REPO / "docker" / image / "Dockerfile").read_text()
    assert "--require-hashes --no-deps -r /src/requirements.lock" in text
    assert "sbom.py" in text and "/usr/share/kaitopy/sbom.cdx.json" in text
    assert "USER 65532:65532" in text


def test_the_locked_download_is_hash_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pip's hash-checking mode, from the lock: a pin whose hash is wrong is refused, so no file
    the lock does not name can reach an image. (No download happens: the local find-links
    directory holds the one wheel, and its hash is wrong on purpose.)"""
    wheelhouse = tmp_path / "links"
    wheelhouse.mkdir()
    wheel = wheelhouse / "kaitopy_probe-1.0-py3-none-any.whl"
    subprocess.run(
        [sys.executable, "-c", f"import zipfile; zipfile.ZipFile({str(wheel)!r}, 'w').close()"], check=True
    )
    lock = tmp_path / "probe.lock"
    lock.write_text("kaitopy-probe==1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    monkeypatch.setenv("KAITOPY_IMAGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KAITOPY_WHEELS", str(wheelhouse))
    args = [*wheels._platform_args(False), "--no-index", "--no-deps", "--require-hashes", "-r", str(lock)]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--dest", str(tmp_path / "out"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "THESE PACKAGES DO NOT MATCH THE HASHES" in proc.stderr, proc.stderr


def test_host_built_images_get_an_sbom_of_the_debian_package_they_copy(tmp_path: Path) -> None:
    if not Path("/var/lib/dpkg/status").is_file() or "Package: busybox-static\n" not in Path(
        "/var/lib/dpkg/status"
    ).read_text(errors="replace"):
        pytest.skip("needs Debian's busybox-static installed (the tools image copies it)")
    staging.add_host_sbom(tmp_path, "tools", ["busybox-static"])
    doc = json.loads((tmp_path / "sbom.cdx.json").read_text())
    [component] = doc["components"]
    assert component["name"] == "busybox-static"
    status = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "busybox-static"], capture_output=True, text=True, check=True
    )
    assert component["version"] == status.stdout
    assert doc["metadata"]["timestamp"] == "2023-11-14T22:13:20Z"  # fixed: same package, same file


def test_the_debian_base_can_be_pinned_to_a_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    from imagelib import base

    monkeypatch.delenv("KAITOPY_DEBIAN_SNAPSHOT", raising=False)
    live = base.input_hash()
    assert base.mirrors()[0] == "deb http://deb.debian.org/debian bookworm main"
    monkeypatch.setenv("KAITOPY_DEBIAN_SNAPSHOT", "20261201T000000Z")
    assert all("snapshot.debian.org/archive/" in m and "/20261201T000000Z " in m for m in base.mirrors())
    assert base.input_hash() != live  # a pinned base is a different base
    monkeypatch.setenv("KAITOPY_DEBIAN_SNAPSHOT", "yesterday")
    with pytest.raises(SystemExit, match="KAITOPY_DEBIAN_SNAPSHOT='yesterday': expected a snapshot"):
        base.mirrors()
