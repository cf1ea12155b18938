"""kube-proxy for the local nodes. Every local node shares this machine's network namespace, so
one kube-proxy programs the Service rules for all of them (several would fight over the same
iptables chains). It starts with the first node and stops with the last."""

from __future__ import annotations

import asyncio
import json
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

    @property
    def _pid_file(self) -> Path:
        return self.dir / "pid"

    def _pid(self) -> int:
        try:
            return int(json.loads(self._pid_file.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return 0

    def running(self) -> bool:
        return system.alive(self._pid(), str(self.dir))

    async def ensure(self) -> None:
        if self.running():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        kubeconfig = self.dir / "kubeconfig"
        # The user the default ClusterRoleBinding system:node-proxier names.
        cert, key = self.ca.issue_client("system:kube-proxy", None)
        kubeconfig.write_text(
            configs.kubeconfig(self.apiserver_url, self.ca.cert_pem, cert, key, "kube-proxy")
        )
        kubeconfig.chmod(0o600)
        config = self.dir / "config.yaml"
        config.write_text(configs.kube_proxy_config(str(kubeconfig)))
        pid = system.spawn_detached(
            [str(self.binary), f"--config={config}", "--v=1"], self.dir / "kube-proxy.log"
        )
        self._pid_file.write_text(json.dumps({"pid": pid}))
        log.info("kube-proxy started", extra={"pid": pid})

    async def stop(self) -> None:
        await system.stop(self._pid(), str(self.dir))
        # Its chains stay behind when it is stopped; it removes them itself when asked to.
        await system.run(str(self.binary), "--cleanup", check=False)
        self._pid_file.unlink(missing_ok=True)
        await asyncio.to_thread(shutil.rmtree, self.dir, True)


async def stop_recorded(machine_dir: Path, binary: Path | None) -> bool:
    """Stop the kube-proxy a pid file under `machine_dir` names, without the CA a KubeProxy
    needs (for `kaitopy local-nodes reset`); True when one ran."""
    state = machine_dir / "kube-proxy"
    try:
        pid = int(json.loads((state / "pid").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        pid = 0
    running = system.alive(pid, str(state))
    await system.stop(pid, str(state))
    if binary is not None:  # a missing binary is fine: run() with check=False returns ""
        await system.run(str(binary), "--cleanup", check=False)
    await asyncio.to_thread(shutil.rmtree, state, True)
    return running
