"""A real OCI registry on loopback for push/pull tests: Debian's `docker-registry` package
(the distribution registry 2.8) with htpasswd auth, plain HTTP, storage in a temp dir."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BINARY = "/usr/bin/docker-registry"


@dataclass(frozen=True)
class Registry:
    host: str  # 127.0.0.1:PORT
    username: str
    password: str
    storage: Path

    def docker_config(self, path: Path, password: str | None = None) -> Path:
        """Write a .dockerconfigjson for this registry (with `password`, default the right one)."""
        token = base64.b64encode(f"{self.username}:{password or self.password}".encode()).decode()
        path.write_text(json.dumps({"auths": {self.host: {"auth": token}}}))
        return path


def available() -> bool:
    return Path(BINARY).is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # 401: up and asking for credentials
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"docker-registry did not answer at {url} within {timeout}s")


@contextmanager
def run_registry(workdir: Path, username: str = "tuner", password: str = "s3cret-pass") -> Iterator[Registry]:
    import bcrypt

    if not available():
        raise RuntimeError(f"{BINARY} is missing: apt-get install -y docker-registry")
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    htpasswd = workdir / "htpasswd"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    htpasswd.write_text(f"{username}:{hashed}\n")
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(
        json.dumps(
            {
                "version": 0.1,
                "log": {"level": "warn", "accesslog": {"disabled": True}},
                "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
                "http": {"addr": f"127.0.0.1:{port}"},
                "auth": {"htpasswd": {"realm": "kaitopy-test", "path": str(htpasswd)}},
            }
        )
    )
    log = (workdir / "registry.log").open("wb")
    proc = subprocess.Popen([BINARY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(f"http://127.0.0.1:{port}/v2/", proc)
        yield Registry(f"127.0.0.1:{port}", username, password, storage)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(storage, ignore_errors=True)
