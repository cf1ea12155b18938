"""The files that make a local node: containerd's config, the CNI network, the kubelet's
configuration and kubeconfig. Pure functions of the layout, so each is table-tested."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kaitopy.provisioner.local.layout import (
    CLUSTER_DNS_ADDRESS,
    CLUSTER_DOMAIN,
    INFRA_NETWORK,
    POD_NETWORK,
    SERVICE_NETWORK,
    NodeLayout,
)

CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
RUNC = "/usr/sbin/runc"


@dataclass(frozen=True)
class NodeSettings:
    """What every local node shares: the images it may pull and how it reaches the API server."""

    apiserver_url: str
    pause_image: str
    # Registries reached over plain HTTP (host:port on loopback): the project's own registry.
    insecure_registries: Sequence[str] = ()


def containerd_config(node: NodeLayout, settings: NodeSettings) -> str:
    d = node.containerd_data
    # One containerd per node (its own root, state and socket), so deleting a node removes
    # exactly its containers and images. restrict_oom_score_adj: this machine's root lacks
    # CAP_SYS_RESOURCE, and without it runc fails every sandbox ("can't get final child's PID").
    return f"""version = 2
root = "{d / "root"}"
state = "{d / "state"}"

[grpc]
  address = "{node.containerd_socket}"

[ttrpc]
  address = "{node.containerd_socket}.ttrpc"

[debug]
  level = "warn"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{settings.pause_image}"
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        Root = "{node.runc_root}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{node.cni_conf_dir}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{node.registry_hosts_dir}"
"""


def registry_hosts(registry: str) -> str:
    """containerd's hosts.toml for one registry on loopback: plain HTTP, pull and resolve only."""
    return f"""server = "http://{registry}"

[host."http://{registry}"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
"""


def cni_conflist(node: NodeLayout) -> str:
    # Routes: the pod network, the Service range and the project's own endpoints (layout.py). No
    # default route, so a pod cannot
    # even try to reach an address off this machine; ipMasq off, so nothing is NATed outward.
    conf = {
        "cniVersion": "1.0.0",
        "name": f"kaitopy-{node.name}",
        "plugins": [
            {
                "type": "bridge",
                "bridge": node.bridge,
                "isGateway": True,
                "isDefaultGateway": False,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(node.cni_ipam_dir),
                    "ranges": [[{"subnet": str(node.pod_subnet), "gateway": node.node_ip}]],
                    "routes": [
                        {"dst": str(POD_NETWORK)},
                        {"dst": str(SERVICE_NETWORK)},
                        {"dst": str(INFRA_NETWORK)},
                    ],
                },
            }
        ],
    }
    return json.dumps(conf, indent=2)


def kubelet_config(node: NodeLayout, client_ca_file: str) -> str:
    """KubeletConfiguration as JSON (valid YAML). Each node binds its own InternalIP, so every
    kubelet keeps the standard ports without clashing with the others on this machine."""
    conf = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.node_ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": node.node_ip,
        "healthzPort": 10248,
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        "providerID": f"local://{node.name}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        # This machine mounts the hybrid v1/v2 hierarchy; kubelet 1.31+ refuses v1 by default.
        "failCgroupV1": False,
        "failSwapOn": False,
        "resolvConf": str(node.resolv_conf),
        # Pods (dnsPolicy ClusterFirst) ask the project's cluster DNS, which answers for the
        # cluster's names only (clusterdns.py).
        "clusterDNS": [CLUSTER_DNS_ADDRESS],
        "clusterDomain": CLUSTER_DOMAIN,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": client_ca_file},
        },
        "authorization": {"mode": "Webhook"},
        "serializeImagePulls": False,
        # The machine's disk is shared by every node: only evict on real exhaustion.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
        "imageGCHighThresholdPercent": 95,
        "imageGCLowThresholdPercent": 90,
        "nodeStatusReportFrequency": "20s",
        "enableDebuggingHandlers": True,
        "maxPods": 32,
    }
    return json.dumps(conf, indent=2)


def kubeconfig(server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, user: str) -> str:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    conf = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "local", "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)},
            }
        ],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }
    return json.dumps(conf, indent=2)


# The node's own resolver configuration, which pods with dnsPolicy Default (and the kubelet's
# search list) get: no name server, since the only one this machine knows is off it (a resolver
# with no `nameserver` line asks the pod's own loopback, where nothing answers). Pods with the
# default ClusterFirst policy get the cluster DNS instead (kubelet_config's clusterDNS).
RESOLV_CONF = "options ndots:1\n"


def node_labels_arg(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def taints_arg(taints: Sequence[tuple[str, str, str]]) -> str:
    """--register-with-taints: key=value:Effect (value may be empty)."""
    return ",".join(f"{k}={v}:{e}" for k, v, e in taints)


def kube_proxy_config(kubeconfig_path: str, cluster_cidr: str = str(POD_NETWORK)) -> str:
    conf = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": kubeconfig_path},
        "clusterCIDR": cluster_cidr,
        # NodePorts only on the project's own bridges, never on the machine's real interfaces.
        "nodePortAddresses": [cluster_cidr],
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
        # Leave the machine's conntrack table size alone (the sysctl is not ours to change).
        "conntrack": {"maxPerCore": 0, "min": 0},
        # Empty disables them: one kube-proxy per machine needs no probe port to clash on.
        "healthzBindAddress": "",
        "metricsBindAddress": "",
        "bindAddress": "127.0.0.1",
    }
    return json.dumps(conf, indent=2)
