"""Starts and stops the local nodes' cluster DNS (clusterdns.py): one process for every node on
this machine, on LISTEN_ADDRESS of a link the project creates (`kpdns0`, a bridge with no ports,
as hack/localcluster.py's `kaitopy-api`), with kube-proxy's identity (`system:kube-proxy` may list
and watch Services and EndpointSlices, all it reads). Started with the first node, stopped with
the last, like kube-proxy."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
from pathlib import Path

from kaitopy.provisioner.local import network, system
from kaitopy.provisioner.local.layout import CLUSTER_DNS_ADDRESS as LISTEN_ADDRESS
from kaitopy.provisioner.local.pki import CertificateAuthority
from kaitopy.provisioner.local.proxy import write_proxier_kubeconfig

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

    def running(self) -> bool:
        return system.alive(system.recorded_pid(self.dir), str(self.dir))

    async def ensure(self) -> None:
        if self.running():
            return
        await ensure_link()
        self.dir.mkdir(parents=True, exist_ok=True)
        kubeconfig = write_proxier_kubeconfig(self.dir, self.apiserver_url, self.ca)
        pid = await system.spawn_detached(
            [sys.executable, "-m", "kaitopy.provisioner.local.clusterdns", f"--kubeconfig={kubeconfig}"],
            self.dir / "cluster-dns.log",
        )
        system.record_pid(self.dir, pid)
        log.info("cluster DNS started", extra={"pid": pid, "address": LISTEN_ADDRESS})

    async def stop(self) -> None:
        await stop_recorded(self.dir.parent)


async def stop_recorded(machine_dir: Path) -> bool:
    """Stop the cluster DNS a pid file under `machine_dir` names and remove its link (also for
    `kaitopy local-nodes reset`); True when one ran."""
    state = machine_dir / "cluster-dns"
    pid = system.recorded_pid(state)
    running = system.alive(pid, str(state))
    await system.stop(pid, str(state))
    await remove_link()
    await asyncio.to_thread(shutil.rmtree, state, True)
    return running
