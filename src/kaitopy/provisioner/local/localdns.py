"""Starts and stops the local nodes' cluster DNS (clusterdns.py): one process for every node on
this machine, on LISTEN_ADDRESS of a link the project creates (`kpdns0`, a bridge with no ports,
as hack/localcluster.py's `kaitopy-api`), with kube-proxy's identity (`system:kube-proxy` may list
and watch Services and EndpointSlices, all it reads). Started with the first node, stopped with
the last, like kube-proxy."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
from pathlib import Path

from kaitopy.provisioner.local import configs, network, system
from kaitopy.provisioner.local.layout import CLUSTER_DNS_ADDRESS as LISTEN_ADDRESS
from kaitopy.provisioner.local.pki import CertificateAuthority

log = logging.getLogger(__name__)
LINK = "kpdns0"


async def ensure_link() -> None:
    if not network.link_exists(LINK):
        await system.run("ip", "link", "add", LINK, "type", "bridge")
    addrs = await system.run("ip", "-4", "-o", "addr", "show", "dev", LINK)
    if f" {LISTEN_ADDRESS}/" not in addrs:
        await system.run("ip", "addr", "add", f"{LISTEN_ADDRESS}/32", "dev", LINK)
    await system.run("ip", "link", "set", LINK, "up")


async def remove_link() -> None:
    if network.link_exists(LINK):
        await system.run("ip", "link", "delete", LINK, check=False)


class LocalDns:
    def __init__(self, root: Path, apiserver_url: str, ca: CertificateAuthority) -> None:
        self.dir = root / "cluster-dns"
        self.apiserver_url = apiserver_url
        self.ca = ca

    @property
    def _pid_file(self) -> Path:
        return self.dir / "pid"

    def _pid(self) -> int:
        return _recorded_pid(self.dir)

    def running(self) -> bool:
        return system.alive(self._pid(), str(self.dir))

    async def ensure(self) -> None:
        if self.running():
            return
        await ensure_link()
        self.dir.mkdir(parents=True, exist_ok=True)
        kubeconfig = self.dir / "kubeconfig"
        cert, key = self.ca.issue_client("system:kube-proxy", None)
        kubeconfig.write_text(
            configs.kubeconfig(self.apiserver_url, self.ca.cert_pem, cert, key, "kube-proxy")
        )
        kubeconfig.chmod(0o600)
        pid = system.spawn_detached(
            [sys.executable, "-m", "kaitopy.provisioner.local.clusterdns", f"--kubeconfig={kubeconfig}"],
            self.dir / "cluster-dns.log",
        )
        self._pid_file.write_text(json.dumps({"pid": pid}))
        log.info("cluster DNS started", extra={"pid": pid, "address": LISTEN_ADDRESS})

    async def stop(self) -> None:
        await stop_recorded(self.dir.parent)


def _recorded_pid(state: Path) -> int:
    try:
        return int(json.loads((state / "pid").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return 0


async def stop_recorded(machine_dir: Path) -> bool:
    """Stop the cluster DNS a pid file under `machine_dir` names and remove its link (also for
    `kaitopy local-nodes reset`); True when one ran."""
    state = machine_dir / "cluster-dns"
    pid = _recorded_pid(state)
    running = system.alive(pid, str(state))
    await system.stop(pid, str(state))
    await remove_link()
    await asyncio.to_thread(shutil.rmtree, state, True)
    return running
