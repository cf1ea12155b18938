"""docker/sbom.py: the CycloneDX SBOM each image build writes from what it installed."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "sbom.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kaitopy_docker_sbom", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sbom = _load()

STATUS = """\
Package: python3.11-minimal
Status: install ok installed
Priority: important
Architecture: amd64
Source: python3.11
Version: 3.11.2-6+deb12u6
Description: Minimal subset of the Python language
 continuation line: Package: not-a-package

Package: removed-thing
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: ca-certificates
Status: install ok installed
Architecture: all
Version: 20230311
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(STATUS)
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text(
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
    )
    site = root / "opt/kaitopy/lib/python3.11/site-packages"
    for name, version, extra in (
        ("Typing_Extensions", "4.15.0", "License-Expression: PSF-2.0\n"),
        ("torch", "2.13.0+cpu", "License: BSD-3-Clause\n"),
        ("cryptography", "50.0.1", "Classifier: License :: OSI Approved :: Apache Software License\n"),
    ):
        info = site / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.4\nName: {name}\nVersion: {version}\n{extra}\nbody\n"
        )
    (site / "broken-1.0.dist-info").mkdir()  # no METADATA: skipped, not guessed
    return root


def test_lists_installed_debian_and_python_packages_as_purls(root: Path) -> None:
    site = root / "opt/kaitopy/lib/python3.11/site-packages"
    doc = sbom.sbom("model-server-cpu", "1.2.3", root, [site])
    assert (doc["bomFormat"], doc["specVersion"], doc["version"]) == ("CycloneDX", "1.5", 1)
    assert doc["metadata"]["component"] == {
        "type": "container",
        "bom-ref": "model-server-cpu",
        "name": "model-server-cpu",
        "version": "1.2.3",
    }
    by_purl = {c["purl"]: c for c in doc["components"]}
    assert sorted(by_purl) == [
        "pkg:deb/debian/ca-certificates@20230311?arch=all&distro=debian-12",
        "pkg:deb/debian/python3.11-minimal@3.11.2-6+deb12u6?arch=amd64&distro=debian-12",
        "pkg:pypi/cryptography@50.0.1",
        "pkg:pypi/torch@2.13.0+cpu",
        "pkg:pypi/typing-extensions@4.15.0",
    ]
    py = by_purl["pkg:deb/debian/python3.11-minimal@3.11.2-6+deb12u6?arch=amd64&distro=debian-12"]
    assert {"name": "kaitopy:dpkg-source", "value": "python3.11"} in py["properties"]
    assert by_purl["pkg:pypi/typing-extensions@4.15.0"]["licenses"] == [{"expression": "PSF-2.0"}]
    assert by_purl["pkg:pypi/torch@2.13.0+cpu"]["licenses"] == [{"license": {"name": "BSD-3-Clause"}}]
    assert by_purl["pkg:pypi/cryptography@50.0.1"]["licenses"] == [
        {"license": {"name": "Apache Software License"}}
    ]
    assert all(c["bom-ref"] == c["purl"] for c in doc["components"])


def test_deterministic_and_records_the_lock(root: Path, tmp_path: Path) -> None:
    site = root / "opt/kaitopy/lib/python3.11/site-packages"
    lock = tmp_path / "model-server-cpu.lock"
    lock.write_text("torch==2.13.0+cpu --hash=sha256:00\n")
    first = sbom.sbom("x", "1", root, [site], lock)
    assert first == sbom.sbom("x", "1", root, [site], lock)
    assert "timestamp" not in first["metadata"]
    props = {p["name"]: p["value"] for p in first["metadata"]["properties"]}
    assert props["kaitopy:python-lock"].startswith("model-server-cpu.lock sha256:")
    assert props["kaitopy:os"] == "Debian GNU/Linux 12 (bookworm)"
    stamped = sbom.sbom("x", "1", root, [site], lock, epoch="1700000000")
    assert stamped["metadata"]["timestamp"] == "2023-11-14T22:13:20Z"
    # A different content gives a different serial number.
    (site / "torch-2.13.0+cpu.dist-info" / "METADATA").write_text("Name: torch\nVersion: 2.14.0\n")
    assert sbom.sbom("x", "1", root, [site], lock)["serialNumber"] != first["serialNumber"]


def test_the_running_environment_is_described_as_importlib_sees_it(tmp_path: Path) -> None:
    """Against a real site-packages (this test's own): every distribution, at its version."""
    site = Path(sysconfig.get_paths()["purelib"])
    out = tmp_path / "sbom.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--name",
            "venv",
            "--root",
            str(tmp_path),
            "--site-packages",
            str(site),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    listed = {c["purl"].split("@")[0].removeprefix("pkg:pypi/"): c["version"] for c in doc["components"]}
    installed = {
        sbom.pypi_name(d.metadata["Name"]): d.version
        for d in importlib.metadata.distributions(path=[str(site)])
        if d.metadata["Name"]
    }
    assert listed == installed
    assert listed["aiohttp"] == importlib.metadata.version("aiohttp")


def test_only_deb_describes_just_the_named_packages(root: Path) -> None:
    doc = sbom.sbom("tools", "1", root, [], only_deb=["ca-certificates"])
    assert [c["name"] for c in doc["components"]] == ["ca-certificates"]
    with pytest.raises(SystemExit, match="not installed here, so not described: busybox-static"):
        sbom.sbom("tools", "1", root, [], only_deb=["busybox-static"])
