"""The host side of the local nodes' network: each node's bridge and the guards.

The guards are filter chains (guard_chains) that drop a forwarded packet from the pod network
whose destination is outside it, and any packet for a cluster address that would leave through
an interface that is not the project's. Pods already have no default route
(configs.cni_conflist); the guards make "traffic stays on this machine" hold even for a pod that
adds a route of its own, or for a host process that calls a ClusterIP nothing answers."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
from pathlib import Path

from kaitopy.provisioner.local import system
from kaitopy.provisioner.local.layout import BRIDGE_PREFIX, CLUSTER_NETWORKS, POD_NETWORK, NodeLayout

GUARD_CHAIN = "KAITOPY-EGRESS"
CLUSTER_CHAIN = "KAITOPY-CLUSTER"
# Where a packet for a cluster address may go: loopback (the project's own endpoints are local
# addresses), a node's bridge, or a project link. Anything else is a real interface: off the machine.
OUR_INTERFACES = ("lo", f"{BRIDGE_PREFIX}+", "kaitopy-+")


def guard_chains() -> dict[tuple[str, str], tuple[list[list[str]], list[list[str]]]]:
    """(table, chain) -> (its rules, the jumps into it). Two guards:
    - filter KAITOPY-EGRESS: a forwarded packet from the pod network must stay in it;
    - mangle KAITOPY-CLUSTER, in POSTROUTING: a packet (from the host or forwarded) for any cluster
      address (pods, Services, the project's endpoints, kwok's simulated pods) must leave through
      one of our interfaces. A ClusterIP with no kube-proxy rule, or a kwok pod's made-up IP, would
      otherwise follow the default route off the machine. POSTROUTING because only there are the
      destination (after kube-proxy's DNAT) and the outgoing interface both final: filter OUTPUT
      still sees the interface the packet was routed to before its DNAT."""
    egress = [["-d", str(POD_NETWORK), "-j", "RETURN"], ["-j", "DROP"]]
    cluster: list[list[str]] = []
    for net in CLUSTER_NETWORKS:
        cluster += [["-d", str(net), "-o", iface, "-j", "RETURN"] for iface in OUR_INTERFACES]
        cluster.append(["-d", str(net), "-j", "DROP"])
    return {
        ("filter", GUARD_CHAIN): (egress, [["FORWARD", "-s", str(POD_NETWORK)]]),
        ("mangle", CLUSTER_CHAIN): (cluster, [["POSTROUTING"]]),
    }


SYSCTLS = {
    # Pods on two nodes' bridges, and Service traffic DNATed by kube-proxy, cross the host.
    "net/ipv4/ip_forward": "1",
    # A pod calling a Service whose endpoint sits on the same bridge goes through iptables.
    "net/bridge/bridge-nf-call-iptables": "1",
}


async def prepare_host() -> None:
    # Built into many kernels; modprobe only where they are modules (and kmod is installed).
    if not _bridge_netfilter_loaded():
        await system.run("modprobe", "br_netfilter", check=False)
    await ensure_guard()
    for key, value in SYSCTLS.items():
        set_sysctl(key, value)


def set_sysctl(key: str, value: str) -> None:
    path = Path("/proc/sys") / key
    if path.exists() and path.read_text().strip() != value:
        path.write_text(value)


async def ensure_guard() -> None:
    """Idempotent: each guard chain with exactly its rules, jumped to first."""
    for (table, chain), (rules, jumps) in guard_chains().items():
        ipt = ["iptables", "-w", "-t", table]
        if await _exit_code(*ipt, "-n", "-L", chain) != 0:
            await system.run(*ipt, "-N", chain)
        await system.run(*ipt, "-F", chain)
        for rule in rules:
            await system.run(*ipt, "-A", chain, *rule)
        for jump in jumps:
            if await _exit_code(*ipt, "-C", *jump, "-j", chain) != 0:
                await system.run(*ipt, "-I", jump[0], "1", *jump[1:], "-j", chain)


async def remove_guard() -> None:
    for (table, chain), (_, jumps) in guard_chains().items():
        ipt = ["iptables", "-w", "-t", table]
        for jump in jumps:
            while await _exit_code(*ipt, "-C", *jump, "-j", chain) == 0:
                await system.run(*ipt, "-D", *jump, "-j", chain)
        await system.run(*ipt, "-F", chain, check=False)
        await system.run(*ipt, "-X", chain, check=False)


async def remove_kube_chains() -> None:
    """With the last local node gone: the KUBE-* chains kubelets and kube-proxy leave behind
    (kubelet's canaries and its localnet firewall; kube-proxy --cleanup misses its canary). The
    local provider is the only kubelet on this machine, so every such chain is its own."""
    for table in ("filter", "nat", "mangle"):
        rules = (await system.run("iptables", "-w", "-t", table, "-S", check=False)).splitlines()
        for rule in rules:
            parts = rule.split()
            if parts[:1] == ["-A"] and not parts[1].startswith("KUBE-") and "KUBE-" in rule:
                await system.run("iptables", "-w", "-t", table, "-D", *parts[1:], check=False)
        chains = [r.split()[1] for r in rules if r.startswith("-N KUBE-")]
        for chain in chains:
            await system.run("iptables", "-w", "-t", table, "-F", chain, check=False)
        for chain in chains:
            await system.run("iptables", "-w", "-t", table, "-X", chain, check=False)


async def _exit_code(*argv: str) -> int:
    try:
        await system.run(*argv)
    except system.CommandError:
        return 1
    return 0


async def ensure_bridge(node: NodeLayout) -> None:
    """The node's bridge with its InternalIP, made before the kubelet starts (it needs the
    address to register); the CNI bridge plugin later finds and reuses it."""
    if not link_exists(node.bridge):
        await system.run("ip", "link", "add", node.bridge, "type", "bridge")
    addrs = await system.run("ip", "-4", "-o", "addr", "show", "dev", node.bridge)
    if f" {node.node_ip}/" not in addrs:
        await system.run(
            "ip", "addr", "add", f"{node.node_ip}/{node.pod_subnet.prefixlen}", "dev", node.bridge
        )
    await system.run("ip", "link", "set", node.bridge, "up")


async def remove_bridge(node: NodeLayout) -> None:
    """The bridge and any veth still attached to it, with the pods' network namespaces at their
    other ends: pods whose runtime died with the node were never torn down by CNI DEL."""
    ports = bridge_ports(node.bridge)
    orphans = await _peer_namespaces(ports)
    for port in ports:
        await system.run("ip", "link", "delete", port, check=False)
    for name in orphans:
        await system.run("ip", "netns", "delete", name, check=False)
    if link_exists(node.bridge):
        await system.run("ip", "link", "delete", node.bridge, check=False)


def holds_pod_address(addr_output: str) -> bool:
    """Whether `ip -o -4 addr show` run inside a network namespace lists an address in the local
    nodes' pod network: only the CNI of our nodes hands those out, so such a namespace is a pod's of
    ours."""
    for line in addr_output.splitlines():
        words = line.split()
        if "inet" in words:
            cidr = words[words.index("inet") + 1]
            with contextlib.suppress(ValueError):
                if ipaddress.ip_interface(cidr).ip in POD_NETWORK:
                    return True
    return False


async def pod_namespaces() -> list[str]:
    """Every network namespace that holds a local-node pod address, whichever node made it."""
    found = []
    listed = await system.run("ip", "netns", "list", check=False)
    for line in listed.splitlines():
        name = line.split(" (id:")[0].strip()
        if not name:
            continue
        addrs = await system.run("ip", "-n", name, "-o", "-4", "addr", "show", check=False)
        if holds_pod_address(addrs):
            found.append(name)
    return found


async def remove_pod_namespaces() -> list[str]:
    """Remove every pod network namespace. For a machine-wide reset: a node killed with its
    runtime never ran CNI DEL for its pods, and once its bridge is gone their namespaces can no
    longer be found through the veths."""
    removed = await pod_namespaces()
    for name in removed:
        await system.run("ip", "netns", "delete", name, check=False)
    return removed


async def _peer_namespaces(ports: list[str]) -> list[str]:
    """The named network namespaces (CNI's /var/run/netns entries) holding the other ends of
    these veths. `ip link` names a peer's netns (link-netns NAME) when it can, else gives its id
    (link-netnsid N), which `ip netns list` maps to a name."""
    if not ports:
        return []
    listed = await system.run("ip", "netns", "list", check=False)
    ids = {}
    for line in listed.splitlines():
        name, _, rest = line.partition(" (id: ")
        if rest:
            ids[rest.rstrip(")").strip()] = name.strip()
    names = []
    for port in ports:
        words = (await system.run("ip", "-o", "link", "show", "dev", port, check=False)).split()
        for key, value in itertools.pairwise(words):
            if key == "link-netns":
                names.append(value)
            elif key == "link-netnsid" and value in ids:
                names.append(ids[value])
    return names


# sysfs reads answer from kernel memory at once: fine to call from the event loop.
def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def bridge_ports(bridge: str) -> list[str]:
    ports = Path(f"/sys/class/net/{bridge}/brif")
    return [p.name for p in ports.iterdir()] if ports.is_dir() else []


def bridges() -> list[str]:
    """Every local node's bridge on this machine, whoever made it."""
    return sorted(
        p.name
        for p in Path("/sys/class/net").iterdir()
        if p.name.startswith(BRIDGE_PREFIX) and p.name[len(BRIDGE_PREFIX) :].isdigit()
    )


def bridge_indexes() -> set[int]:
    return {int(b[len(BRIDGE_PREFIX) :]) for b in bridges()}


def _bridge_netfilter_loaded() -> bool:
    return Path("/proc/sys/net/bridge").exists()
