"""kube-proxy for the local nodes. Every local node shares this machine's network namespace, so
one kube-proxy programs the Service rules for all of them (several would fight over the same
iptables chains). It starts with the first node and stops with the last."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from kaitopy.provisioner.local import configs, system
from kaitopy.provisioner.local.pki import CertificateAuthority

log = logging.getLogger(__name__)


class KubeProxy:
    def __init__(self, root: Path, binary: Path, apiserver_url: str, ca: CertificateAuthority) -> None:
        self.dir = root / "kube-proxy"
        self.binary = binary
        self.apiserver_url = apiserver_url
        self.ca = ca

    def running(self) -> bool:
        return system.alive(system.recorded_pid(self.dir), str(self.dir))

    async def ensure(self) -> None:
        if self.running():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        kubeconfig = write_proxier_kubeconfig(self.dir, self.apiserver_url, self.ca)
        config = self.dir / "config.yaml"
        config.write_text(configs.kube_proxy_config(str(kubeconfig)))
        pid = await system.spawn_detached(
            [str(self.binary), f"--config={config}", "--v=1"], self.dir / "kube-proxy.log"
        )
        system.record_pid(self.dir, pid)
        log.info("kube-proxy started", extra={"pid": pid})

    async def stop(self) -> None:
        await stop_recorded(self.dir.parent, self.binary)


def write_proxier_kubeconfig(state: Path, apiserver_url: str, ca: CertificateAuthority) -> Path:
    """A kubeconfig for `system:kube-proxy`, the user the default ClusterRoleBinding
    system:node-proxier names (it may read Services, EndpointSlices and Nodes): kube-proxy's, and
    the cluster DNS's, which reads the same."""
    kubeconfig = state / "kubeconfig"
    cert, key = ca.issue_client("system:kube-proxy", None)
    kubeconfig.write_text(configs.kubeconfig(apiserver_url, ca.cert_pem, cert, key, "kube-proxy"))
    kubeconfig.chmod(0o600)
    return kubeconfig


async def stop_recorded(machine_dir: Path, binary: Path | None) -> bool:
    """Stop the kube-proxy a pid file under `machine_dir` names, without the CA a KubeProxy
    needs (for `kaitopy local-nodes reset`); True when one ran."""
    state = machine_dir / "kube-proxy"
    pid = system.recorded_pid(state)
    running = system.alive(pid, str(state))
    await system.stop(pid, str(state))
    # Its chains stay behind when it is stopped; it removes them itself when asked to.
    if binary is not None:  # a missing binary is fine: run() with check=False returns ""
        await system.run(str(binary), "--cleanup", check=False)
    await asyncio.to_thread(shutil.rmtree, state, True)
    return running
