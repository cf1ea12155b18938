"""One local node's life: lay out its files, start its containerd and kubelet, and take it all
down again leaving nothing behind (processes, mounts, network namespaces, cgroups, bridge, files).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kaitopy.provisioner.local import configs, network, system
from kaitopy.provisioner.local.layout import DATA_DIR, NodeLayout
from kaitopy.provisioner.local.pki import CertificateAuthority

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Binaries:
    kubelet: Path
    crictl: Path
    containerd: str = "/usr/bin/containerd"


@dataclass
class NodeRecord:
    """What the provider remembers about a node, in <node dir>/node.json: it survives a restart
    of the provisioner, as a cloud's instance records do."""

    name: str
    index: int
    instance_type: str
    created_at: float
    labels: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    state: str = "creating"  # creating | running | deleting
    restarts: int = 0
    """Times a dead kubelet or containerd was started again during the launch (as systemd's
    Restart= does on a real node)."""

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> NodeRecord | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def write_files(
    node: NodeLayout,
    settings: configs.NodeSettings,
    ca: CertificateAuthority,
) -> None:
    for d in (
        node.logs,
        node.containerd_dir,
        node.cni_conf_dir,
        node.cni_ipam_dir,
        node.kubelet_dir,
        node.pki,
    ):
        d.mkdir(parents=True, exist_ok=True)
    node.containerd_config.write_text(configs.containerd_config(node, settings))
    for registry in settings.insecure_registries:
        hosts = node.registry_hosts_dir / registry
        hosts.mkdir(parents=True, exist_ok=True)
        (hosts / "hosts.toml").write_text(configs.registry_hosts(registry))
    (node.cni_conf_dir / "10-kaitopy.conflist").write_text(configs.cni_conflist(node))
    (node.pki / "ca.crt").write_bytes(ca.cert_pem)
    node.kubelet_config.write_text(configs.kubelet_config(node, str(node.pki / "ca.crt")))
    node.resolv_conf.write_text(configs.RESOLV_CONF)
    cert, key = ca.issue_client(f"system:node:{node.name}", "system:nodes")
    node.kubeconfig.write_text(configs.kubeconfig(settings.apiserver_url, ca.cert_pem, cert, key, node.name))
    node.kubeconfig.chmod(0o600)


async def start(
    node: NodeLayout,
    record: NodeRecord,
    bins: Binaries,
    labels: Mapping[str, str],
    taints: Sequence[tuple[str, str, str]],
) -> None:
    """Bridge, cgroup root, containerd (wait for its socket), kubelet. Idempotent: a process
    already running is kept."""
    await network.ensure_bridge(node)
    system.ensure_cgroup(node.cgroup_root)
    marker = str(node.root)
    _adopt_running_agents(node, record)
    if not system.alive(record.pids.get("containerd", 0), marker):
        record.pids["containerd"] = await system.spawn_detached(
            # --address and --root repeat the config so that the command line names the node's
            # data folder: how reset_machine finds the process when no record is left.
            [
                bins.containerd,
                "--config",
                str(node.containerd_config),
                "--address",
                str(node.containerd_socket),
                "--root",
                str(node.containerd_data / "root"),
            ],
            node.logs / "containerd.log",
        )
        record.save(node.state_file)
    await _wait_socket(node, record)
    if not system.alive(record.pids.get("kubelet", 0), marker):
        argv = [
            str(bins.kubelet),
            f"--config={node.kubelet_config}",
            f"--kubeconfig={node.kubeconfig}",
            f"--root-dir={node.kubelet_dir}",
            f"--cert-dir={node.pki}",
            f"--hostname-override={node.name}",
            f"--node-ip={node.node_ip}",
            f"--node-labels={configs.node_labels_arg(labels)}",
            "--v=1",
        ]
        if taints:
            argv.append(f"--register-with-taints={configs.taints_arg(taints)}")
        record.pids["kubelet"] = await system.spawn_detached(argv, node.logs / "kubelet.log")
    record.state = "running"
    record.save(node.state_file)


def _adopt_running_agents(node: NodeLayout, record: NodeRecord) -> None:
    """An agent of this node that runs although the record does not name it (a start interrupted
    before the record was saved) is the node's: started a second time, it would find its
    address, port and socket taken."""
    marker = str(node.root)
    for agent in ("containerd", "kubelet"):
        if system.alive(record.pids.get(agent, 0), marker):
            continue
        running = _agents_mentioning(marker, agent)
        if running:
            record.pids[agent] = running[0]
            log.info(
                "adopted a running node agent", extra={"node": node.name, "agent": agent, "pid": running[0]}
            )


def dead_agents(node: NodeLayout, record: NodeRecord) -> list[str]:
    """The node's agents that are not running, each with how it ended when that is known."""
    dead = []
    for agent in ("containerd", "kubelet"):
        pid = record.pids.get(agent, 0)
        if not system.alive(pid, str(node.root)):
            dead.append(f"{agent} ({system.exit_status(pid)})")
    return dead


async def _wait_socket(node: NodeLayout, record: NodeRecord, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not node.containerd_socket.exists():
        if not system.alive(record.pids.get("containerd", 0), str(node.root)):
            log_file = node.logs / "containerd.log"
            how = system.exit_status(record.pids.get("containerd", 0))
            last = system.log_tail(log_file)
            raise system.CommandError(
                f"containerd of node {node.name} exited ({how}){': ' + last if last else ''}; see {log_file}"
            )
        if time.monotonic() > deadline:
            raise system.CommandError(f"containerd of node {node.name} made no socket within {timeout:.0f}s")
        await asyncio.sleep(0.1)


async def teardown(node: NodeLayout, record: NodeRecord | None, bins: Binaries) -> None:
    """Stop the kubelet, remove every pod sandbox through the CRI (so CNI releases addresses and
    deletes network namespaces), stop containerd and stray shims, then unmount, remove cgroups,
    the bridge and the files. Each step tolerates what an earlier, interrupted run left."""
    marker = str(node.root)
    pids = record.pids if record else {}
    await system.stop(pids.get("kubelet", 0), marker)
    # A kubelet the record does not name (a start interrupted before the record was saved, a
    # record lost): found by the node's folder on its command line. Left running, it would hold
    # the node's address and port for the next node given this index.
    await system.kill_all(_agents_mentioning(marker, "kubelet"), marker)
    if node.containerd_socket.exists() and system.alive(pids.get("containerd", 0), marker):
        crictl = [
            str(bins.crictl),
            "--runtime-endpoint",
            f"unix://{node.containerd_socket}",
            "--timeout",
            "30s",
        ]
        pods = (await system.run(*crictl, "pods", "-q", check=False)).split()
        for pod in pods:
            await system.run(*crictl, "stopp", pod, check=False, timeout=60)
            await system.run(*crictl, "rmp", "-f", pod, check=False, timeout=60)
    await system.stop(pids.get("containerd", 0), marker)
    await system.kill_all(_agents_mentioning(marker, "containerd"), marker)
    # Shims run in sessions of their own; they name their containerd's socket on the command line.
    await system.kill_all(system.pids_mentioning(str(node.containerd_socket)), str(node.containerd_socket))
    await system.unmount_all(node.root)
    await system.remove_cgroup(node.cgroup_root)
    await network.remove_bridge(node)
    await system.unmount_all(node.data)
    for d in (node.data, node.root):
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(shutil.rmtree, d)


def _agents_mentioning(marker: str, agent: str) -> list[int]:
    """The node's processes of one agent (kubelet, containerd), whatever its record says."""
    found = system.pids_mentioning(marker)
    return [p for p in found if Path(next(iter(system.cmdline(p)), "")).name == agent]


async def reset_machine() -> list[str]:
    """Tear down every local node on this machine, whoever made it and whether or not its record
    survives: what `kaitopy local-nodes reset` does after a crash left nodes behind. Returns what
    it removed."""
    removed: list[str] = []
    for index in sorted(network.bridge_indexes() | data_indexes()):
        data = DATA_DIR / str(index)
        marker = str(data)
        for pid in system.pids_mentioning(marker):
            await system.stop(pid, marker, grace_s=5.0)
        await system.kill_all(system.pids_mentioning(marker), marker)
        await system.unmount_all(data)
        removed.append(f"node data {data}")
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(shutil.rmtree, data)
    for cgroup in system.cgroup_dirs("kaitopy"):
        if cgroup.is_dir():
            for child in [c for c in cgroup.iterdir() if c.is_dir()]:
                await system.remove_cgroup(f"kaitopy/{child.name}")
    system.remove_empty_cgroup("kaitopy")
    for bridge in network.bridges():
        await system.run("ip", "link", "delete", bridge, check=False)
        removed.append(f"bridge {bridge}")
    removed += [f"pod network namespace {name}" for name in await network.remove_pod_namespaces()]
    return removed


def data_indexes() -> set[int]:
    """Indexes whose machine-wide data folder exists: a node holds it, or one that was not torn
    down does (its kubelet may still hold the index's address). Either way it is not free."""
    if not DATA_DIR.is_dir():
        return set()
    return {int(p.name) for p in DATA_DIR.iterdir() if p.name.isdigit()}
