"""The local nodes' cluster DNS, decided and encoded: which names answer what, and the bytes, read
back by an independent DNS implementation (dnspython)."""

from __future__ import annotations

import ipaddress
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from kaitopy.provisioner.local import dnswire
from kaitopy.provisioner.local.clusterdns import answer, build_table, resolve

pytestmark = pytest.mark.unit


def service(
    name: str, ns: str = "default", cluster_ip: str | None = "10.96.0.20", **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": name, "namespace": ns}, "spec": dict(spec)}
    if cluster_ip is not None:
        body["spec"]["clusterIP"] = cluster_ip
    return body


def endpoint_slice(service_name: str, *endpoints: dict[str, Any], ns: str = "default") -> dict[str, Any]:
    return {
        "metadata": {"name": f"{service_name}-x", "namespace": ns,
                     "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": "IPv4",
        "endpoints": list(endpoints),
    }  # fmt: skip


def ep(ip: str, ready: bool | None = True, hostname: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"addresses": [ip]}
    if ready is not None:
        out["conditions"] = {"ready": ready}
    if hostname:
        out["hostname"] = hostname
    return out


def ips(*values: str) -> tuple[ipaddress.IPv4Address, ...]:
    return tuple(ipaddress.IPv4Address(v) for v in values)


def test_a_service_answers_with_its_cluster_ip() -> None:
    table = build_table([service("web", cluster_ip="10.96.0.20")], [])
    assert table == {"web.default.svc.cluster.local": ips("10.96.0.20")}


def test_a_headless_service_answers_with_ready_endpoints_and_each_hostname() -> None:
    # A StatefulSet's headless Service: pod 0 is ready, pod 1 starting.
    svc = service("ws-headless", cluster_ip="None")
    slices = [endpoint_slice("ws-headless", ep("10.230.1.5", True, "ws-0"), ep("10.230.2.7", False, "ws-1"))]
    assert build_table([svc], slices) == {
        "ws-headless.default.svc.cluster.local": ips("10.230.1.5"),
        "ws-0.ws-headless.default.svc.cluster.local": ips("10.230.1.5"),
    }
    # publishNotReadyAddresses: workers find the leader before it is Ready
    svc["spec"]["publishNotReadyAddresses"] = True
    table = build_table([svc], slices)
    assert table["ws-headless.default.svc.cluster.local"] == ips("10.230.1.5", "10.230.2.7")
    assert table["ws-1.ws-headless.default.svc.cluster.local"] == ips("10.230.2.7")


def test_slices_of_other_namespaces_services_or_families_do_not_mix_in() -> None:
    svc = service("h", cluster_ip="None")
    other_ns = endpoint_slice("h", ep("10.230.9.9"), ns="other")
    v6 = endpoint_slice("h", ep("fd00::1"))
    v6["addressType"] = "IPv6"
    unlabelled = endpoint_slice("h", ep("10.230.8.8"))
    del unlabelled["metadata"]["labels"]
    no_conditions = endpoint_slice("h", ep("10.230.1.1", ready=None))  # unknown readiness counts as ready
    table = build_table([svc], [other_ns, v6, unlabelled, no_conditions])
    assert table == {"h.default.svc.cluster.local": ips("10.230.1.1")}


def test_external_name_services_are_not_served() -> None:
    assert (
        build_table([service("x", cluster_ip=None, type="ExternalName", externalName="example.com")], [])
        == {}
    )


@pytest.mark.parametrize(
    ("name", "qtype", "rcode", "addresses"),
    [
        ("web.default.svc.cluster.local", dnswire.TYPE_A, dnswire.NOERROR, ips("10.96.0.20")),
        ("web.default.svc.cluster.local", 28, dnswire.NOERROR, ()),  # AAAA: no records, not an error
        ("nope.default.svc.cluster.local", dnswire.TYPE_A, dnswire.NXDOMAIN, ()),
        ("default.svc.cluster.local", dnswire.TYPE_A, dnswire.NOERROR, ()),  # a parent of names
        ("svc.cluster.local", dnswire.TYPE_A, dnswire.NOERROR, ()),
        # outside the zone: refused, never forwarded off the machine
        ("example.com", dnswire.TYPE_A, dnswire.REFUSED, ()),
        ("cluster.local.example.com", dnswire.TYPE_A, dnswire.REFUSED, ()),
    ],
)
def test_resolve(name: str, qtype: int, rcode: int, addresses: tuple[ipaddress.IPv4Address, ...]) -> None:
    table = {"web.default.svc.cluster.local": ips("10.96.0.20")}
    got = resolve(table, name, qtype)
    assert (got.rcode, got.addresses) == (rcode, addresses)


def test_the_wire_answer_reads_back_in_another_implementation() -> None:
    table = {"ws-0.ws-headless.ns1.svc.cluster.local": ips("10.230.1.5", "10.230.2.7")}
    query = dns.message.make_query("WS-0.ws-headless.ns1.svc.cluster.local.", "A")  # case-insensitive
    raw = answer(query.to_wire(), table)
    assert raw is not None
    reply = dns.message.from_wire(raw)
    assert reply.id == query.id and reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA and reply.flags & dns.flags.QR and reply.flags & dns.flags.RD
    assert reply.question == query.question
    (rrset,) = reply.answer
    assert rrset.ttl == 5 and rrset.rdtype == dns.rdatatype.A
    assert sorted(r.address for r in rrset) == ["10.230.1.5", "10.230.2.7"]


@pytest.mark.parametrize(
    ("name", "rcode"),
    [("nope.ns1.svc.cluster.local.", dns.rcode.NXDOMAIN), ("pypi.org.", dns.rcode.REFUSED)],
)
def test_errors_on_the_wire(name: str, rcode: int) -> None:
    query = dns.message.make_query(name, "A")
    raw = answer(query.to_wire(), {})
    assert raw is not None
    reply = dns.message.from_wire(raw)
    assert reply.rcode() == rcode and not reply.answer


def test_a_long_answer_is_truncated_and_flagged() -> None:
    many = tuple(ipaddress.IPv4Address(f"10.230.1.{i}") for i in range(1, 60))
    query = dns.message.make_query("h.default.svc.cluster.local.", "A")
    raw = answer(query.to_wire(), {"h.default.svc.cluster.local": many})
    assert raw is not None and len(raw) <= 512
    reply = dns.message.from_wire(raw)
    assert reply.flags & dns.flags.TC
    assert 0 < len(reply.answer[0]) < len(many)


def test_garbage_gets_formerr_or_nothing() -> None:
    assert answer(b"\x00", {}) is None  # no id to answer to
    raw = answer(b"\x12\x34\x01\x00\x00\x02" + b"\x00" * 6, {})  # two questions
    assert raw is not None and raw[:2] == b"\x12\x34" and raw[3] & 0x0F == dnswire.FORMERR
    truncated = dns.message.make_query("web.default.svc.cluster.local.", "A").to_wire()[:-3]
    raw = answer(truncated, {})
    assert raw is not None and raw[3] & 0x0F == dnswire.FORMERR
