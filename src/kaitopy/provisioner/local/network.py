"""The host side of the local nodes' network: each node's bridge and the egress guard.

The guard is a filter chain that drops every forwarded packet from the pod network whose
destination is outside it. Pods already have no default route (configs.cni_conflist); the guard
makes "traffic stays on this machine" hold even for a pod that adds a route of its own."""

from __future__ import annotations

from pathlib import Path

from kaitopy.provisioner.local import system
from kaitopy.provisioner.local.layout import BRIDGE_PREFIX, POD_NETWORK, NodeLayout

GUARD_CHAIN = "KAITOPY-EGRESS"
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
    """Idempotent: the chain, its two rules, and a jump to it first in FORWARD."""
    ipt = "iptables"
    if await _exit_code(ipt, "-w", "-n", "-L", GUARD_CHAIN) != 0:
        await system.run(ipt, "-w", "-N", GUARD_CHAIN)
    rules = [["-d", str(POD_NETWORK), "-j", "RETURN"], ["-j", "DROP"]]
    await system.run(ipt, "-w", "-F", GUARD_CHAIN)
    for rule in rules:
        await system.run(ipt, "-w", "-A", GUARD_CHAIN, *rule)
    jump = ["FORWARD", "-s", str(POD_NETWORK), "-j", GUARD_CHAIN]
    if (await _exit_code(ipt, "-w", "-C", *jump)) != 0:
        await system.run(ipt, "-w", "-I", *jump[:1], "1", *jump[1:])


async def remove_guard() -> None:
    ipt = "iptables"
    jump = ["FORWARD", "-s", str(POD_NETWORK), "-j", GUARD_CHAIN]
    while (await _exit_code(ipt, "-w", "-C", *jump)) == 0:
        await system.run(ipt, "-w", "-D", *jump)
    await system.run(ipt, "-w", "-F", GUARD_CHAIN, check=False)
    await system.run(ipt, "-w", "-X", GUARD_CHAIN, check=False)


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
    """The bridge and any veth still attached to it (pods torn down without CNI DEL)."""
    for port in bridge_ports(node.bridge):
        await system.run("ip", "link", "delete", port, check=False)
    if link_exists(node.bridge):
        await system.run("ip", "link", "delete", node.bridge, check=False)


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
