"""Where a local node's files live and how its network is laid out. Pure: nothing here touches
the machine, so the layout is unit-tested and documented in one place (docs/local-nodes.md).

Every node gets an index `i` (1..MAX_NODES) and, from it:
  - a Linux bridge `kpbr<i>` that the project creates, holding 10.230.<i>.1/24: the node's
    InternalIP (the kubelet refuses a loopback node IP) and its pods' gateway;
  - a pod subnet 10.230.<i>.0/24 handed out by CNI host-local IPAM on that bridge.
Pods get routes to the pod network, the Service range and the project's own endpoints (API
server, registry) only, never a default route, and the
host drops any forwarded packet from the pod network that leaves it (see network.py): traffic
stays on this machine.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

POD_NETWORK = ipaddress.IPv4Network("10.230.0.0/16")
SERVICE_NETWORK = ipaddress.IPv4Network("10.96.0.0/16")  # hack/localcluster.py's Service range
# The project's own endpoints on this machine, each on a link the project creates: the API server
# (10.229.255.1, hack/localcluster.py) and the image registry (10.229.254.1, hack/images.py).
# Pods reach them directly (the weights init container pulls from the registry).
INFRA_NETWORK = ipaddress.IPv4Network("10.229.0.0/16")
# The local nodes' cluster DNS (clusterdns.py) listens here, on the project's link `kpdns0`; each
# kubelet gives it to its pods as their name server, for names under CLUSTER_DOMAIN.
CLUSTER_DNS_ADDRESS = "10.229.253.1"
CLUSTER_DOMAIN = "cluster.local"
# kwok's simulated pods get made-up addresses here (hack/localcluster.py's POD_CIDR); kube-proxy
# programs Services that point at them too.
SIMULATED_POD_NETWORK = ipaddress.IPv4Network("10.244.0.0/16")
CLUSTER_NETWORKS = (POD_NETWORK, SERVICE_NETWORK, INFRA_NETWORK, SIMULATED_POD_NETWORK)
MAX_NODES = 250
BRIDGE_PREFIX = "kpbr"
# What the runtime writes (containerd's root and socket, the kubelet's root dir with its sockets
# and pod volumes) lives under a short machine-wide path, one folder per node index: a Unix
# socket's path may not pass 104 bytes, and the node's own folder (its record, configuration,
# certificates and logs) can be anywhere, a test's temporary directory say.
DATA_DIR = Path("/var/lib/kaitopy/nodes")


@dataclass(frozen=True)
class NodeLayout:
    name: str
    index: int
    root: Path  # this node's directory; everything the node writes lives below it

    def __post_init__(self) -> None:
        if not 1 <= self.index <= MAX_NODES:
            raise ValueError(f"node index {self.index} outside 1..{MAX_NODES}")

    # -- network ---------------------------------------------------------------------------------
    @property
    def bridge(self) -> str:
        return f"{BRIDGE_PREFIX}{self.index}"

    @property
    def pod_subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.230.{self.index}.0/24")

    @property
    def node_ip(self) -> str:
        return str(self.pod_subnet.network_address + 1)

    # -- files -----------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.root / "node.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def data(self) -> Path:
        return DATA_DIR / str(self.index)

    @property
    def containerd_dir(self) -> Path:
        return self.root / "containerd"

    @property
    def containerd_data(self) -> Path:
        return self.data / "containerd"

    @property
    def containerd_config(self) -> Path:
        return self.containerd_dir / "config.toml"

    @property
    def containerd_socket(self) -> Path:
        return self.data / "containerd.sock"

    @property
    def registry_hosts_dir(self) -> Path:
        return self.containerd_dir / "certs.d"

    @property
    def runc_root(self) -> Path:
        return self.containerd_data / "runc"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def kubelet_dir(self) -> Path:
        return self.data / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet-config.yaml"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubelet.kubeconfig"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def resolv_conf(self) -> Path:
        return self.root / "resolv.conf"

    @property
    def cgroup_root(self) -> str:
        """The kubelet's --cgroup-root: one per node, so two kubelets never manage the same
        /kubepods tree on this shared machine."""
        return f"/kaitopy/{self.name}"


def free_index(used: set[int]) -> int:
    for i in range(1, MAX_NODES + 1):
        if i not in used:
            return i
    raise RuntimeError(f"all {MAX_NODES} local node slots are in use")
