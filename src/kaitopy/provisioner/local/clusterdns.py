"""Cluster DNS for the local nodes: `<service>.<namespace>.svc.cluster.local` and, for a headless
Service, `<hostname>.<service>.<namespace>.svc.cluster.local`, answered from the API server's
Services and EndpointSlices as the Kubernetes DNS specification defines them (what CoreDNS's
kubernetes plugin serves on a real cluster). A multi-node workspace's workers find their leader
this way, and pods reach Services by name.

It answers for the cluster zone only and forwards nothing: a name outside it is REFUSED, so no
query ever leaves this machine. One process serves every local node (as kube-proxy does), on an
address of a link the project creates (`kpdns0`, LISTEN_ADDRESS), which each kubelet hands its
pods as their name server.

Run as `python -m kaitopy.provisioner.local.clusterdns --kubeconfig K`; the local provider starts
and stops it with the first and last node (localdns.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import cast

from kaitopy.provisioner.local import dnswire
from kaitopy.provisioner.local.layout import CLUSTER_DNS_ADDRESS, CLUSTER_DOMAIN
from kaitopy.runtime import Client, Informer, InformerCache, Kind, kinds
from kaitopy.runtime.objects import Obj

log = logging.getLogger(__name__)

ZONE = CLUSTER_DOMAIN
LISTEN_ADDRESS = CLUSTER_DNS_ADDRESS
"""In the project's infrastructure range (layout.INFRA_NETWORK), which pods have a route to."""
TTL_S = 5
"""Short: a pod that moved gets its new address within seconds (CoreDNS's default is 5 too)."""
ENDPOINT_SLICE = Kind("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

Table = Mapping[str, tuple[ipaddress.IPv4Address, ...]]


@dataclass(frozen=True)
class Answer:
    rcode: int
    addresses: tuple[ipaddress.IPv4Address, ...] = ()
    authoritative: bool = True


def _v4(values: Iterable[object]) -> list[ipaddress.IPv4Address]:
    out = []
    for v in values:
        with contextlib.suppress(ValueError):
            ip = ipaddress.ip_address(str(v))
            if isinstance(ip, ipaddress.IPv4Address):
                out.append(ip)
    return out


def build_table(
    services: Iterable[Obj], slices: Iterable[Obj], zone: str = ZONE
) -> dict[str, tuple[ipaddress.IPv4Address, ...]]:
    """Name -> addresses. A Service with a cluster IP answers with it; a headless one with its
    ready endpoints (all of them when it publishes not-ready addresses, as a StatefulSet's
    group needs to find its leader before that is Ready), and each endpoint with a hostname
    under its own name. ExternalName Services are not served."""
    by_service: dict[tuple[str, str], list[Obj]] = {}
    for s in slices:
        meta = s.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if owner and s.get("addressType") == "IPv4":
            by_service.setdefault((str(meta.get("namespace")), str(owner)), []).append(s)
    table: dict[str, list[ipaddress.IPv4Address]] = {}
    for svc in services:
        meta = svc.get("metadata") or {}
        spec = svc.get("spec") or {}
        ns, name = str(meta.get("namespace")), str(meta.get("name"))
        fqdn = f"{name}.{ns}.svc.{zone}"
        if spec.get("type") == "ExternalName":
            continue
        cluster_ip = spec.get("clusterIP")
        if cluster_ip and cluster_ip != "None":
            table[fqdn] = _v4([cluster_ip])
            continue
        publish_all = bool(spec.get("publishNotReadyAddresses"))
        addresses: list[ipaddress.IPv4Address] = []
        for s in by_service.get((ns, name), []):
            for ep in s.get("endpoints") or []:
                ready = (ep.get("conditions") or {}).get("ready")
                if not (publish_all or ready is None or ready):
                    continue
                ips = _v4(ep.get("addresses") or [])
                addresses += ips
                if ep.get("hostname") and ips:
                    table.setdefault(f"{str(ep['hostname']).lower()}.{fqdn}", []).extend(ips)
        table[fqdn] = addresses
    return {k: tuple(sorted(set(v))) for k, v in table.items()}


def resolve(table: Table, name: str, qtype: int, zone: str = ZONE) -> Answer:
    """What to answer. Outside the zone: REFUSED (nothing is forwarded). A known name: its A
    records, or no records for another type (AAAA: the resolver then uses the A answer it asked
    for alongside). An unknown name in the zone: NXDOMAIN, unless it is a parent of known names
    (`svc.cluster.local`: NOERROR, no records, as the specification has it)."""
    if name != zone and not name.endswith("." + zone):
        return Answer(dnswire.REFUSED, authoritative=False)
    if name in table:
        return Answer(dnswire.NOERROR, table[name] if qtype == dnswire.TYPE_A else ())
    suffix = "." + name
    if any(k.endswith(suffix) for k in table) or name in (zone, f"svc.{zone}"):
        return Answer(dnswire.NOERROR)
    return Answer(dnswire.NXDOMAIN)


def answer(data: bytes, table: Table, zone: str = ZONE) -> bytes | None:
    """The reply to one UDP query, or None when it cannot even be answered with an error."""
    try:
        query = dnswire.parse_query(data)
    except dnswire.DnsFormatError:
        return dnswire.error_response(data, dnswire.FORMERR)
    if query.question.qclass != dnswire.CLASS_IN or (query.flags & 0x7800):
        return dnswire.build_response(query, dnswire.NOTIMP, authoritative=False)
    a = resolve(table, query.question.name, query.question.qtype, zone)
    return dnswire.build_response(query, a.rcode, a.addresses, ttl=TTL_S, authoritative=a.authoritative)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: ClusterDns) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A datagram endpoint's transport (the selector's class is not a DatagramTransport subclass).
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        reply = answer(data, self.server.table(), self.server.zone)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class ClusterDns:
    """The server: two informers (Services, EndpointSlices) and a UDP socket. The table is
    rebuilt from the caches when they changed since the last query (their resource versions)."""

    def __init__(self, client: Client, zone: str = ZONE) -> None:
        self.zone = zone
        self.cache = InformerCache(client)
        self.services: Informer = self.cache.informer(kinds.SERVICE)
        self.slices: Informer = self.cache.informer(ENDPOINT_SLICE, label_selector=SERVICE_NAME_LABEL)
        self._table: Table = {}
        self._built_from: tuple[object, ...] = ()

    def table(self) -> Table:
        services, slices = self.services.store.list(), self.slices.store.list()
        version = tuple(
            sorted(str((o.get("metadata") or {}).get("resourceVersion")) for o in (*services, *slices))
        )
        if version != self._built_from:
            self._table = build_table(services, slices, self.zone)
            self._built_from = version
        return self._table

    async def serve(self, host: str, port: int, stop: asyncio.Event) -> None:
        self.cache.start()
        await self.cache.wait_synced()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=(host, port))
        log.info("cluster DNS serving", extra={"address": f"{host}:{port}", "zone": self.zone})
        try:
            await stop.wait()
        finally:
            transport.close()
            await self.cache.stop()


async def _main(args: argparse.Namespace) -> None:
    client = await Client.from_kubeconfig(args.kubeconfig)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await ClusterDns(client, args.zone).serve(args.address, args.port, stop)
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="kaitopy-cluster-dns", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--address", default=LISTEN_ADDRESS)
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--zone", default=ZONE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
