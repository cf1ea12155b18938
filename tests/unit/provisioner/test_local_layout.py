"""The local provider's node layout and generated files: pure, so checked as data."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from kaitopy.provisioner.local import configs
from kaitopy.provisioner.local.layout import (
    INFRA_NETWORK,
    MAX_NODES,
    POD_NETWORK,
    SERVICE_NETWORK,
    NodeLayout,
    free_index,
)


def layout(index: int = 7) -> NodeLayout:
    return NodeLayout("ws-abc", index, Path("/var/tmp/nodes/ws-abc"))


def test_each_node_has_its_own_subnet_bridge_and_address_inside_the_pod_network() -> None:
    seen = set()
    for i in (1, 2, 250):
        n = layout(i)
        assert n.pod_subnet.subnet_of(POD_NETWORK)
        assert ipaddress.IPv4Address(n.node_ip) in n.pod_subnet
        assert len(n.bridge) <= 15  # Linux interface names
        seen.add((n.bridge, str(n.pod_subnet), n.node_ip))
    assert len(seen) == 3


@pytest.mark.parametrize("index", [0, MAX_NODES + 1])
def test_index_out_of_range_is_refused(index: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        layout(index)


def test_free_index_takes_the_lowest_gap_and_fails_when_full() -> None:
    assert free_index(set()) == 1
    assert free_index({1, 2, 4}) == 3
    with pytest.raises(RuntimeError, match="in use"):
        free_index(set(range(1, MAX_NODES + 1)))


def test_pods_get_no_default_route_and_no_masquerade() -> None:
    conf = json.loads(configs.cni_conflist(layout()))
    bridge = conf["plugins"][0]
    assert bridge["type"] == "bridge" and bridge["bridge"] == "kpbr7"
    assert bridge["ipMasq"] is False and bridge["isDefaultGateway"] is False
    routes = {r["dst"] for r in bridge["ipam"]["routes"]}
    assert routes == {str(POD_NETWORK), str(SERVICE_NETWORK), str(INFRA_NETWORK)}
    assert "0.0.0.0/0" not in routes
    assert bridge["ipam"]["ranges"][0][0] == {"subnet": "10.230.7.0/24", "gateway": "10.230.7.1"}


def test_sockets_stay_under_the_unix_path_limit_wherever_the_node_folder_is() -> None:
    deep = NodeLayout("n" * 63, MAX_NODES, Path("/tmp") / ("x" * 200))
    assert len(f"{deep.containerd_socket}.ttrpc") < 104


def test_containerd_config_is_private_to_the_node() -> None:
    n = layout()
    text = configs.containerd_config(
        n,
        configs.NodeSettings(
            "https://127.0.0.1:6443", "127.0.0.1:5001/kaitopy/pause:dev", ("127.0.0.1:5001",)
        ),
    )
    for path in (n.containerd_socket, n.runc_root, n.cni_conf_dir, n.registry_hosts_dir):
        assert f'"{path}"' in text
    assert "restrict_oom_score_adj = true" in text
    assert 'sandbox_image = "127.0.0.1:5001/kaitopy/pause:dev"' in text


def test_kubelet_binds_its_own_address_and_cgroup_root() -> None:
    n = layout()
    conf = json.loads(configs.kubelet_config(n, "/ca.crt"))
    assert conf["address"] == conf["healthzBindAddress"] == "10.230.7.1"
    assert conf["cgroupRoot"] == "/kaitopy/ws-abc"
    assert conf["authentication"]["anonymous"]["enabled"] is False
    assert conf["authorization"]["mode"] == "Webhook"
    assert conf["providerID"] == "local://ws-abc"
    assert conf["containerRuntimeEndpoint"] == f"unix://{n.containerd_socket}"


def test_pods_have_no_name_server_off_the_machine() -> None:
    assert "nameserver" not in configs.RESOLV_CONF


def test_kube_proxy_serves_node_ports_only_on_the_pod_network() -> None:
    conf = json.loads(configs.kube_proxy_config("/kp.kubeconfig"))
    assert conf["mode"] == "iptables"
    assert conf["nodePortAddresses"] == [str(POD_NETWORK)]
    assert conf["iptables"]["localhostNodePorts"] is False


def test_labels_and_taints_arguments() -> None:
    assert configs.node_labels_arg({"b": "2", "a": "1"}) == "a=1,b=2"
    assert (
        configs.taints_arg([("sku", "gpu", "NoSchedule"), ("k", "", "NoExecute")])
        == "sku=gpu:NoSchedule,k=:NoExecute"
    )


@pytest.mark.parametrize(
    ("output", "ours"),
    [
        # A local node's pod: loopback and its address on the node's bridge subnet.
        (
            "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n"
            "2: eth0    inet 10.230.2.2/24 brd 10.230.2.255 scope global eth0\\       valid_lft forever",
            True,
        ),
        # Anyone else's namespace: other addresses, loopback only, or nothing readable.
        ("2: eth0    inet 10.231.2.2/24 brd 10.231.2.255 scope global eth0", False),
        ("1: lo    inet 127.0.0.1/8 scope host lo", False),
        ("", False),
        ("2: eth0    inet not-an-address scope global eth0", False),
    ],
)
def test_a_reset_removes_only_namespaces_holding_a_pod_address(output: str, ours: bool) -> None:
    from kaitopy.provisioner.local.network import holds_pod_address

    assert holds_pod_address(output) is ours
