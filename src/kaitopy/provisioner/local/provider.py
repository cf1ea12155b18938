"""The `local` provider: a launch starts a real node on this machine (kubelet + containerd +
runc + CNI bridge), shaped like the requested GPU instance type: its labels, and the SKU's GPUs
advertised as the `nvidia.com/gpu` extended resource so the workload schedules exactly as on AKS.
No GPU is used; the model server runs its CPU engine.

Node records live under the provider's root directory (one folder per node), so a restarted
provisioner finds its nodes again, and garbage collection sees leaked ones like any cloud's."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kaitopy.provisioner.cloudprovider import (
    NODECLAIM_LABEL,
    PROVIDER_LABEL,
    CloudProviderError,
    Instance,
    LaunchFailedError,
    LaunchProgress,
    LaunchRequest,
)
from kaitopy.provisioner.kwok import NodeShape
from kaitopy.provisioner.local import configs, network, node, system
from kaitopy.provisioner.local.layout import NodeLayout, free_index
from kaitopy.provisioner.local.localdns import LocalDns
from kaitopy.provisioner.local.pki import CertificateAuthority
from kaitopy.provisioner.local.proxy import KubeProxy
from kaitopy.runtime import ApiError, Client, NotFound, kinds

log = logging.getLogger(__name__)
GPU_RESOURCE = "nvidia.com/gpu"
# What every local node on this machine shares, whichever provider instance (or local-dir) made
# it: the node network's index space (the bridges) and kube-proxy.
MACHINE_DIR = Path("/run/kaitopy")
# A node agent that dies while the node starts is started again this many times before the launch
# counts as failed: a real node's systemd units restart theirs.
MAX_AGENT_RESTARTS = 3


@dataclass(frozen=True)
class LocalSettings:
    root: Path
    """One folder per node below it; the provider's whole state."""
    bin_dir: Path
    """Where kubelet, kube-proxy and crictl are (hack/ensure-binaries.sh puts them there)."""
    ca_cert: Path
    ca_key: Path
    """The cluster CA that signs each node's client certificate (system:node:<name>)."""
    pause_image: str
    insecure_registries: tuple[str, ...] = ()
    apiserver_url: str | None = None
    """Default: the URL this provisioner reaches the API server at."""
    extra_labels: dict[str, str] = field(default_factory=dict)


class LocalProvider:
    name = "local"

    def __init__(
        self, client: Client, shape_for: Callable[[str], NodeShape], settings: LocalSettings
    ) -> None:
        self._client = client
        self._shape_for = shape_for
        self.settings = settings
        self._lock = asyncio.Lock()
        self._ca = CertificateAuthority.load(settings.ca_cert, settings.ca_key)
        self._bins = node.Binaries(kubelet=settings.bin_dir / "kubelet", crictl=settings.bin_dir / "crictl")
        self._node_settings = configs.NodeSettings(
            apiserver_url=settings.apiserver_url or client.server,
            pause_image=settings.pause_image,
            insecure_registries=settings.insecure_registries,
        )
        self._proxy = KubeProxy(
            MACHINE_DIR, settings.bin_dir / "kube-proxy", self._node_settings.apiserver_url, self._ca
        )
        self._dns = LocalDns(MACHINE_DIR, self._node_settings.apiserver_url, self._ca)

    async def close(self) -> None:
        return None

    # -- records ---------------------------------------------------------------------------------
    def _records(self) -> list[node.NodeRecord]:
        nodes_dir = self.settings.root / "nodes"
        if not nodes_dir.is_dir():
            return []
        found = []
        for d in sorted(nodes_dir.iterdir()):
            record = node.NodeRecord.load(d / "node.json")
            if record is not None:
                found.append(record)
        return found

    def _layout(self, name: str, index: int) -> NodeLayout:
        return NodeLayout(name, index, self.settings.root / "nodes" / name)

    def _record(self, name: str) -> node.NodeRecord | None:
        return node.NodeRecord.load(self.settings.root / "nodes" / name / "node.json")

    # -- CloudProvider ---------------------------------------------------------------------------
    async def begin_launch(self, request: LaunchRequest) -> str:
        shape = self._shape_for(request.instance_type)  # an unknown SKU fails here
        name = request.claim_name
        async with self._lock:
            record = self._record(name)
            if record is None:
                records = {r.index for r in self._records()}
                used = records | network.bridge_indexes() | node.data_indexes()
                record = node.NodeRecord(
                    name=name,
                    index=free_index(used),
                    instance_type=request.instance_type,
                    created_at=time.time(),
                    labels=self._labels(request, shape),
                )
                layout = self._layout(name, record.index)
                record.save(layout.state_file)
                await asyncio.to_thread(node.write_files, layout, self._node_settings, self._ca)
            layout = self._layout(name, record.index)
            try:
                await network.prepare_host()
                await self._proxy.ensure()
                await self._dns.ensure()
                taints = [(t.key, t.value, t.effect) for t in (*request.taints, *request.startup_taints)]
                await node.start(layout, record, self._bins, record.labels, taints)
            except (system.CommandError, OSError) as err:
                raise CloudProviderError(f"starting local node {name}: {err}", cause=err) from err
        log.info("local node started", extra={"node": name, "node_ip": layout.node_ip})
        return json.dumps({"index": record.index})

    async def poll_launch(self, request: LaunchRequest, token: str) -> LaunchProgress:
        name = request.claim_name
        record = self._record(name)
        if record is None:
            # Its folder is gone (deleted by hand, or by `kaitopy local-nodes reset`): the
            # instance no longer exists and never will; the claim's owner replaces the claim.
            raise LaunchFailedError(
                f"local node {name} has no record any more; it was removed during its launch"
            )
        layout = self._layout(name, record.index)
        dead = node.dead_agents(layout, record)
        if dead:
            tail = _tail(layout.logs / "kubelet.log")
            message = f"{', '.join(dead)} of local node {name} stopped; kubelet log: {tail}"
            if record.restarts >= MAX_AGENT_RESTARTS:
                raise LaunchFailedError(message, code="NodeAgentExited")
            record.restarts += 1
            log.warning("restarting a local node's agents", extra={"node": name, "why": message})
            taints = [(t.key, t.value, t.effect) for t in (*request.taints, *request.startup_taints)]
            try:
                await node.start(layout, record, self._bins, record.labels, taints)
            except (system.CommandError, OSError) as err:
                raise CloudProviderError(f"restarting local node {name}: {err}", cause=err) from err
            return LaunchProgress(None, f"restarted ({record.restarts}/{MAX_AGENT_RESTARTS}): {message}")
        try:
            live = await self._client.get_or_none(kinds.NODE, name)
        except ApiError as err:
            raise CloudProviderError(f"reading node {name}: {err}", cause=err) from err
        if live is None:
            return LaunchProgress(None, f"waiting for the kubelet of {name} to register")
        gpus = str(self._shape_for(record.instance_type).capacity.get(GPU_RESOURCE, "0"))
        capacity = (live.get("status") or {}).get("capacity") or {}
        if gpus != "0" and capacity.get(GPU_RESOURCE) != gpus:
            # No device plugin here: advertise the SKU's GPUs as an extended resource, the way a
            # cluster admin does by hand; the kubelet keeps capacity it did not set.
            try:
                await self._client.patch_status(
                    kinds.NODE, name, {"status": {"capacity": {GPU_RESOURCE: gpus}}}
                )
            except ApiError as err:
                raise CloudProviderError(f"advertising GPUs on node {name}: {err}", cause=err) from err
        return LaunchProgress(self._instance(record))

    async def get(self, claim_name: str) -> Instance | None:
        record = self._record(claim_name)
        return None if record is None else self._instance(record)

    async def list(self) -> list[Instance]:
        return [self._instance(r) for r in self._records()]

    async def begin_delete(self, claim_name: str) -> None:
        async with self._lock:
            record = self._record(claim_name)
            if record is None:
                return
            layout = self._layout(claim_name, record.index)
            record.state = "deleting"
            record.save(layout.state_file)
            try:
                await node.teardown(layout, record, self._bins)
                if not network.bridges():  # the last local node on this machine
                    await self._proxy.stop()
                    await self._dns.stop()
                    await network.remove_kube_chains()
                    await network.remove_guard()
                    system.remove_empty_cgroup("kaitopy")
            except (system.CommandError, OSError) as err:
                raise CloudProviderError(f"deleting local node {claim_name}: {err}", cause=err) from err
        log.info("local node deleted", extra={"node": claim_name})
        # As a cloud's node-lifecycle controller does for a deleted VM.
        try:
            await self._client.delete(kinds.NODE, claim_name)
        except NotFound:
            pass
        except ApiError as err:
            raise CloudProviderError(f"deleting node object {claim_name}: {err}", cause=err) from err

    # -- shapes ----------------------------------------------------------------------------------
    def _labels(self, request: LaunchRequest, shape: NodeShape) -> dict[str, str]:
        return {
            **request.labels,
            **shape.labels,
            **self.settings.extra_labels,
            "node.kubernetes.io/instance-type": request.instance_type,
            NODECLAIM_LABEL: request.claim_name,
            PROVIDER_LABEL: self.name,
        }

    def _instance(self, record: node.NodeRecord) -> Instance:
        state, message = ("deleting" if record.state == "deleting" else "running"), ""
        if record.state == "running":
            # The node's agents are the instance: with its kubelet or containerd gone, it is as
            # dead as a VM that crashed (the launch restarts them; after it, nothing does).
            dead = node.dead_agents(self._layout(record.name, record.index), record)
            if dead:
                state, message = "failed", f"{', '.join(dead)} of local node {record.name} stopped"
        return Instance(
            name=record.name,
            instance_type=record.instance_type,
            state=state,
            message=message,
            provider_id=f"local://{record.name}",
            node_name=record.name,
            claim_name=record.labels.get(NODECLAIM_LABEL, record.name),
            created_at=record.created_at,
            labels={NODECLAIM_LABEL: record.labels.get(NODECLAIM_LABEL, record.name)},
        )


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
