"""What the e2e tests on real local nodes share: the images in the loopback registry, the
binaries, the cluster CA, and the checks that a deleted node left nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
IMAGES_SCRIPT = REPO / "hack" / "images.py"
T = TypeVar("T")


@dataclass(frozen=True)
class LocalImages:
    registry: str
    refs: dict[str, str]  # image name -> pullable reference


@dataclass(frozen=True)
class Weights:
    """A model's weights in the loopback registry, and here."""

    prefix: str  # the controller's --weights-registry
    digest: str  # the artifact's manifest digest (--weights-digest)
    model_dir: Path  # the same weights as a Hugging Face directory (to train adapters on)


def ensure_images(*names: str) -> LocalImages:
    """The registry up, the named images built (cached by content) and pushed; their references
    pinned by digest, as hack/images.py recorded them. The build runs in a child process, so this
    test process never imports the image tooling (or its path changes)."""
    subprocess.run([sys.executable, str(IMAGES_SCRIPT), "build", *names], check=True, timeout=3000)
    cache = Path(os.environ.get("KAITOPY_IMAGE_CACHE", "~/.cache/kaitopy/images")).expanduser()
    refs = {k: str(v) for k, v in json.loads((cache / "images.json").read_text()).items()}
    missing = [n for n in names if n not in refs]
    assert not missing, f"hack/images.py recorded no reference for {missing}"
    return LocalImages(registry=refs[names[0]].split("/", 1)[0], refs=refs)


def registry_healthy() -> bool:
    """Whether the loopback registry answers (started by an earlier run, or by this one)."""
    status = [sys.executable, str(IMAGES_SCRIPT), "registry", "status"]
    return subprocess.run(status, capture_output=True, timeout=60).returncode == 0


def stop_registry() -> None:
    """Stop the loopback registry and remove its link (its storage, the image cache, stays)."""
    subprocess.run([sys.executable, str(IMAGES_SCRIPT), "registry", "down"], check=True, timeout=60)


def wait(what: str, check: Callable[[], T], timeout: float = 240.0, interval: float = 1.0) -> T:
    """Poll `check` until it returns something truthy; an AssertionError or OSError (a Service
    kube-proxy has not programmed yet) counts as "not yet"."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (AssertionError, OSError) as err:
            last = err
        else:
            if result:
                return result
            last = result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last}")


def leftovers(node_root: Path, node_name: str, bridge: str) -> list[str]:
    """Everything of a deleted node that is still on the machine: processes, mounts, its bridge,
    cgroups and files. Empty when the teardown was complete."""
    found: list[str] = []
    marker = str(node_root)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # (Temporary directories are named pytest-of-*: only this process itself is exempt.)
        if marker in cmd and int(entry.name) != os.getpid():
            found.append(f"process {entry.name}: {cmd[:160]}")
    # This node's data only: another node may still run on the machine.
    data_dir = f"/var/lib/kaitopy/nodes/{bridge.removeprefix('kpbr')}/"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point.startswith((marker, data_dir)) or point == data_dir.rstrip("/"):
            found.append(f"mount {point}")
    if Path(f"/sys/class/net/{bridge}").exists():
        found.append(f"bridge {bridge}")
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        if (hierarchy / "kaitopy" / node_name).exists():
            found.append(f"cgroup {hierarchy / 'kaitopy' / node_name}")
    if node_root.exists():
        found.append(f"directory {node_root}")
    data = Path("/var/lib/kaitopy/nodes") / bridge.removeprefix("kpbr")
    if data.exists():
        found.append(f"directory {data}")
    return found


def netns() -> set[str]:
    d = Path("/var/run/netns")
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


def kill_node(node_root: Path, node_name: str, index: int) -> list[int]:
    """SIGKILL a whole local node, as a crash of its machine would: every process in its cgroups
    (the containers), its kubelet and containerd, and the shims (which name the node's data
    directory). Returns the pids it killed."""
    import signal

    killed: set[int] = set()
    for _ in range(5):
        pids: set[int] = set()
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            top = hierarchy / "kaitopy" / node_name
            # The dying kubelet removes its pods' cgroups while this walks them: a directory gone
            # mid-walk ends this hierarchy's walk, and the next pass (of five) looks again.
            with contextlib.suppress(OSError):
                for procs in top.rglob("cgroup.procs") if top.is_dir() else ():
                    with contextlib.suppress(OSError, ValueError):
                        pids |= {int(p) for p in procs.read_text().split()}
        markers = (str(node_root), f"/var/lib/kaitopy/nodes/{index}/")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if any(m in cmd for m in markers):
                    pids.add(int(entry.name))
        pids.discard(os.getpid())
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed |= pids
        time.sleep(0.2)
    return sorted(killed)


class Watch:
    """`kubectl get -w -o json` of one object in the background: every version the API server
    sent, so a state that lasts only a second is not missed by polling."""

    def __init__(self, kubectl: list[str]) -> None:
        self.seen: list[dict[str, object]] = []
        self._proc = subprocess.Popen(
            [*kubectl, "-w", "-o", "json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        decoder = json.JSONDecoder()
        buf = ""
        for line in self._proc.stdout:
            buf += line
            while buf.strip():
                try:
                    obj, end = decoder.raw_decode(buf.lstrip())
                except ValueError:
                    break
                self.seen.append(obj)
                buf = buf.lstrip()[end:]

    def stop(self) -> None:
        self._proc.kill()
        self._proc.wait(10)
        self._thread.join(10)


def service_accepts(ip: str, port: int = 80, timeout: float = 60.0) -> None:
    """Wait until a Service's cluster IP takes a TCP connection. A Workspace turns Ready with its
    pod; the node's proxy rules follow the EndpointSlice a little later (seconds on a loaded
    machine), and until then the cluster IP refuses: a first request right at Ready would race it."""

    def connects() -> bool:
        socket.create_connection((ip, port), timeout=5).close()
        return True

    wait(f"service {ip}:{port} to take connections", connects, timeout, interval=0.2)


def chat_completion(
    ip: str, model: str, question: str, max_tokens: int, timeout: float = 120.0
) -> dict[str, Any]:
    """A greedy OpenAI chat completion from a Workspace's Service (its cluster IP, port 80)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    request = urllib.request.Request(
        f"http://{ip}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as r:
        answer: dict[str, Any] = json.loads(r.read().decode())
    return answer
