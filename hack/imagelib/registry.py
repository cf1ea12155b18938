"""The loopback image registry: Debian's docker-registry (distribution 2.8), anonymous, plain HTTP.

It runs detached (its own session, a pid file, a log file) so it outlives this command and any cluster;
its storage sits in the image cache so pushed images survive cluster restarts. Anonymous because the
local kubelet's containerd pulls from it without credentials. It listens on 10.229.254.1 (a link it
creates, see paths.registry_address) when run as root, else on loopback; never on a real interface.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from imagelib import paths

BINARY = "/usr/bin/docker-registry"


@dataclass(frozen=True)
class Status:
    pid: int | None  # our registry's process, when its pid file names a live one
    healthy: bool  # something answers /v2/ on the port
    host: str
    storage: Path

    def describe(self) -> str:
        owner = f"pid {self.pid}" if self.pid else "not started by us"
        state = "healthy" if self.healthy else "not answering"
        return f"registry {self.host}: {state} ({owner}); storage {self.storage}"


def _dir() -> Path:
    return paths.cache_dir() / "registry"


def _config_path() -> Path:
    return _dir() / "config.yml"


def _pid_path() -> Path:
    return _dir() / "registry.pid"


def storage() -> Path:
    return _dir() / "storage"


def _write_config() -> Path:
    config = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(storage())}, "delete": {"enabled": True}},
        "http": {"addr": paths.registry_host()},
    }
    path = _config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
    return path


def healthy(host: str | None = None, timeout: float = 1.0) -> bool:
    """True when a registry answers /v2/ anonymously (200). A 401 means one with auth: not usable here."""
    host = host or paths.registry_host()
    if not _on_this_machine(host.rsplit(":", 1)[0]):
        # Without our link the address is not this machine's: a probe would leave through the
        # default route. Nothing of ours can answer there anyway.
        return False
    try:
        with urllib.request.urlopen(f"http://{host}/v2/", timeout=timeout) as r:
            return int(r.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _our_pid() -> int | None:
    """The pid in our pid file, only if that process is still this registry (pids get reused)."""
    try:
        pid = int(_pid_path().read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if cmdline[:1] == [BINARY.encode()] and str(_config_path()).encode() in cmdline:
        return pid
    return None


def status() -> Status:
    return Status(_our_pid(), healthy(), paths.registry_host(), storage())


def up(timeout: float = 30.0) -> Status:
    """Start the registry unless a healthy one already answers on the port (idempotent)."""
    current = status()
    if current.healthy:
        return current
    if current.pid:
        # Ours but not answering: restart it rather than stack a second one on the port.
        down()
    if not Path(BINARY).is_file():
        raise SystemExit(f"{BINARY} is missing: apt-get install -y docker-registry")
    ensure_link()
    config = _write_config()
    storage().mkdir(parents=True, exist_ok=True)
    log = (_dir() / "registry.log").open("ab")
    # start_new_session: setsid, so the registry survives this command's terminal and process group.
    proc = subprocess.Popen(
        [BINARY, "serve", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    _pid_path().write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"docker-registry exited with {proc.returncode}; see {_dir() / 'registry.log'}")
        if healthy():
            return status()
        time.sleep(0.1)
    raise SystemExit(f"docker-registry did not answer on {paths.registry_host()} within {timeout:.0f}s")


def ensure_link() -> None:
    """The link holding the registry's address, when that address is ours to create."""
    if paths.registry_address() != paths.REGISTRY_ADDRESS:
        return
    link = paths.REGISTRY_LINK
    if not Path(f"/sys/class/net/{link}").exists():
        subprocess.run(["ip", "link", "add", link, "type", "bridge"], check=True)
    shown = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", link], capture_output=True, text=True)
    if f" {paths.REGISTRY_ADDRESS}/" not in shown.stdout:
        subprocess.run(["ip", "addr", "add", f"{paths.REGISTRY_ADDRESS}/32", "dev", link], check=True)
    subprocess.run(["ip", "link", "set", link, "up"], check=True)


def _link_exists() -> bool:
    return Path(f"/sys/class/net/{paths.REGISTRY_LINK}").exists()


def _on_this_machine(address: str) -> bool:
    """Our link's address is this machine's only while the link exists; other addresses (loopback,
    or one given in KAITOPY_REGISTRY_ADDRESS) are not ours to judge."""
    return address != paths.REGISTRY_ADDRESS or _link_exists()


def _listened_on(address: str) -> bool:
    """Whether any TCP socket listens on `address` (/proc/net/tcp: little-endian hex, state 0A)."""
    wanted = "".join(f"{int(octet):02X}" for octet in reversed(address.split(".")))
    try:
        rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return True  # cannot tell: keep the link
    return any(row.split()[1].split(":")[0] == wanted and row.split()[3] == "0A" for row in rows)


def remove_link() -> None:
    """The link ensure_link made, once nothing listens on its address any more: registries on
    other ports (the tests' private ones) and the tests' data servers share it."""
    ours = paths.registry_address() == paths.REGISTRY_ADDRESS
    if ours and _link_exists() and not _listened_on(paths.REGISTRY_ADDRESS):
        subprocess.run(["ip", "link", "delete", paths.REGISTRY_LINK], check=False)


def down(timeout: float = 10.0) -> bool:
    """Stop our registry (only the process our pid file names and whose cmdline is ours), and
    remove the link that held its address when nothing else listens there."""
    pid = _our_pid()
    _pid_path().unlink(missing_ok=True)
    if pid is not None:
        _stop(pid, timeout)
    remove_link()
    return pid is not None


def _stop(pid: int, timeout: float) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True
