"""The tuning pods' egress NetworkPolicy, as rendered."""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from typing import Any

from kaitopy.controllers.workspace import job
from kaitopy.controllers.workspace.egress import tuning_egress_policy
from kaitopy.controllers.workspace.plan import TuningPlan

PLAN = TuningPlan(
    name="tune",
    namespace="team-a",
    preset="phi-3-mini-4k-instruct",
    method="qlora",
    image="ghcr.io/kaitopy/runtime:0.1.0",
    hf_model_id="microsoft/Phi-3-mini-4k-instruct",
    gpus_per_node=1,
    match_labels={"apps": "tune"},
    input_urls=("https://example.com/d.jsonl",),
)


def _allowed_by_ip_blocks(policy: dict[str, Any], address: str) -> bool:
    """Whether an ipBlock rule lets `address` through (pod-selector rules aside)."""
    ip = ip_address(address)
    for rule in policy["spec"]["egress"]:
        for peer in rule["to"]:
            block = peer.get("ipBlock")
            if block is None or ip.version != ip_network(block["cidr"]).version:
                continue
            if ip in ip_network(block["cidr"]) and not any(
                ip in ip_network(e) for e in block.get("except", [])
            ):
                return True
    return False


def test_selects_the_jobs_pods_and_only_limits_egress() -> None:
    policy = tuning_egress_policy(PLAN)
    assert policy["kind"] == "NetworkPolicy" and policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["metadata"] == {
        "name": "tune",
        "namespace": "team-a",
        "labels": {"kaito.sh/workspace": "tune"},
    }
    pod_labels = job.tuning_job(PLAN)["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Egress"]


def test_metadata_wireserver_and_private_ranges_are_denied() -> None:
    policy = tuning_egress_policy(PLAN)
    for address in (
        "169.254.169.254",
        "168.63.129.16",
        "10.0.0.10",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "127.0.0.1",
        "64:ff9b::a9fe:a9fe",
        "fd00:ec2::254",
        "fe80::1",
    ):
        assert not _allowed_by_ip_blocks(policy, address), address
    for address in ("8.8.8.8", "20.50.2.1", "2606:4700:4700::1111"):
        assert _allowed_by_ip_blocks(policy, address), address


def test_dns_goes_to_kube_dns_only() -> None:
    (dns,) = [r for r in tuning_egress_policy(PLAN)["spec"]["egress"] if "ports" in r]
    assert dns["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    (peer,) = dns["to"]
    assert peer["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert "ipBlock" not in peer


def test_a_private_registry_can_be_let_through() -> None:
    policy = tuning_egress_policy(PLAN, extra_cidrs=("10.229.254.1/32",))
    assert _allowed_by_ip_blocks(policy, "10.229.254.1")
    assert not _allowed_by_ip_blocks(policy, "10.229.254.2")
    assert not _allowed_by_ip_blocks(policy, "169.254.169.254")


def test_the_push_registry_is_let_through_when_it_is_an_address() -> None:
    from dataclasses import replace

    local = tuning_egress_policy(replace(PLAN, output_image="10.229.254.1:5001/adapters/tune:1"))
    assert _allowed_by_ip_blocks(local, "10.229.254.1")
    named = tuning_egress_policy(replace(PLAN, output_image="registry.example/adapters/tune:1"))
    assert not _allowed_by_ip_blocks(named, "10.229.254.1")
    v6 = tuning_egress_policy(replace(PLAN, output_image="[fd00::5]:5000/a:1"))
    assert _allowed_by_ip_blocks(v6, "fd00::5")


def test_the_weights_registry_and_the_admins_networks_are_let_through() -> None:
    from dataclasses import replace

    plan = replace(
        PLAN,
        weights_image="10.229.253.7:5000/kaitopy/weights/smollm2-135m-instruct:0.1.2",
        allowed_networks=("10.40.0.0/16",),
    )
    policy = tuning_egress_policy(plan)
    assert _allowed_by_ip_blocks(policy, "10.229.253.7")
    assert _allowed_by_ip_blocks(policy, "10.40.3.4")
    assert not _allowed_by_ip_blocks(policy, "10.41.0.1")
    assert not _allowed_by_ip_blocks(policy, "169.254.169.254")
