"""The local nodes' cluster DNS as the process the provider runs, against the real API server:
a Service and a headless Service's endpoints created through the API answer by name over UDP,
updates arrive within the informers' latency, and nothing outside the zone is answered."""

from __future__ import annotations

import asyncio
import socket
import sys
import uuid
from collections.abc import AsyncIterator

import dns.asyncquery
import dns.message
import dns.rcode
import pytest
from kubernetes_asyncio.client.api_client import ApiClient

from kaitopy.provisioner.local.clusterdns import ENDPOINT_SLICE
from kaitopy.runtime import Client, kinds
from tests.support.cluster import REPO, Cluster
from tests.support.wait import eventually


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def dns_port(kube_cluster: Cluster) -> AsyncIterator[int]:
    port = free_udp_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kaitopy.provisioner.local.clusterdns",
        f"--kubeconfig={kube_cluster.kubeconfig}", "--address=127.0.0.1", f"--port={port}",
        cwd=REPO,
    )  # fmt: skip
    try:
        yield port
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 15) == 0  # SIGTERM is a clean stop


async def ask(port: int, name: str) -> dns.message.Message:
    return await dns.asyncquery.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=2)


def addresses(reply: dns.message.Message) -> list[str]:
    return sorted(r.address for rrset in reply.answer for r in rrset)


async def test_services_and_headless_endpoints_answer_by_name(
    dns_port: int, api_client: ApiClient, namespace: str
) -> None:
    client = Client(api_client)
    svc = f"web-{uuid.uuid4().hex[:6]}"
    created = await client.create(
        kinds.SERVICE,
        {"metadata": {"name": svc, "namespace": namespace}, "spec": {"ports": [{"port": 80}]}},
    )
    cluster_ip = created["spec"]["clusterIP"]
    name = f"{svc}.{namespace}.svc.cluster.local."
    reply = await eventually(lambda: ask(dns_port, name), until=lambda r: addresses(r) == [cluster_ip])
    assert reply.rcode() == dns.rcode.NOERROR

    # A headless Service whose endpoints (one ready, one not) name their pods' hostnames, as a
    # StatefulSet's do; it publishes not-ready addresses, so both answer.
    await client.create(
        kinds.SERVICE,
        {
            "metadata": {"name": "group", "namespace": namespace},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "ports": [{"port": 5000}]},
        },
    )
    await client.create(
        ENDPOINT_SLICE,
        {
            "metadata": {"name": "group-1", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": "group"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.230.1.5"], "hostname": "ws-0", "conditions": {"ready": True}},
                {"addresses": ["10.230.2.7"], "hostname": "ws-1", "conditions": {"ready": False}},
            ],
        },
    )  # fmt: skip
    leader = f"ws-0.group.{namespace}.svc.cluster.local."
    await eventually(lambda: ask(dns_port, leader), until=lambda r: addresses(r) == ["10.230.1.5"])
    group = await ask(dns_port, f"group.{namespace}.svc.cluster.local.")
    assert addresses(group) == ["10.230.1.5", "10.230.2.7"]

    # Gone from the API, gone from DNS.
    await client.delete(kinds.SERVICE, svc, namespace=namespace)
    await eventually(lambda: ask(dns_port, name), until=lambda r: r.rcode() == dns.rcode.NXDOMAIN)
    # Nothing outside the zone is answered (or forwarded).
    assert (await ask(dns_port, "pypi.org.")).rcode() == dns.rcode.REFUSED
