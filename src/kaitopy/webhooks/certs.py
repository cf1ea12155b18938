"""The webhook's serving certificate: a self-signed CA and a leaf for the webhook's host names,
kept in a Secret so every replica serves the same one, and renewed well before it expires.

On renewal the Secret's ca.crt holds the new CA followed by the previous one, so a replica that
has not reloaded yet is still trusted by the API server while the new caBundle rolls out.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kaitopy.runtime import AlreadyExists, Client, Conflict, kinds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CertBundle:
    """PEM material: the CA bundle the API server trusts, and the leaf the server presents."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @property
    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def not_after(self) -> datetime.datetime:
        return self.leaf.not_valid_after_utc

    def hosts(self) -> set[str]:
        san = self.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(
            san.get_values_for_type(x509.DNSName)
        )

    def needs_renewal(
        self, hosts: Sequence[str], now: datetime.datetime, renew_before: datetime.timedelta
    ) -> bool:
        return self.not_after - now < renew_before or not set(hosts) <= self.hosts()


def issue(
    hosts: Sequence[str],
    *,
    now: datetime.datetime,
    validity: datetime.timedelta,
    previous_ca_pem: bytes = b"",
) -> CertBundle:
    """A new CA and a leaf for `hosts` (IP addresses become IP SANs), both valid for `validity`."""
    start = now - datetime.timedelta(minutes=5)  # tolerate clock skew between us and the API server
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"kaitopy-webhook-ca-{int(now.timestamp())}")]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + validity)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM) + _still_valid(previous_ca_pem, now)
    return CertBundle(
        ca_pem=ca_pem,
        cert_pem=leaf.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


def _still_valid(bundle_pem: bytes, now: datetime.datetime) -> bytes:
    """The first certificate of a CA bundle, if it has not expired (older ones are dropped)."""
    if not bundle_pem:
        return b""
    try:
        first = x509.load_pem_x509_certificates(bundle_pem)[0]
    except ValueError:
        return b""
    return first.public_bytes(serialization.Encoding.PEM) if first.not_valid_after_utc > now else b""


def _secret_bundle(secret: dict[str, Any]) -> CertBundle | None:
    data = secret.get("data") or {}
    try:
        bundle = CertBundle(
            ca_pem=base64.b64decode(data["ca.crt"]),
            cert_pem=base64.b64decode(data["tls.crt"]),
            key_pem=base64.b64decode(data["tls.key"]),
        )
        _ = bundle.leaf
        return bundle
    except (KeyError, ValueError, x509.ExtensionNotFound):
        return None


def _secret_body(namespace: str, name: str, bundle: CertBundle) -> dict[str, Any]:
    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "kaitopy-webhook"},
        },
        "data": {
            "ca.crt": b64(bundle.ca_pem),
            "tls.crt": b64(bundle.cert_pem),
            "tls.key": b64(bundle.key_pem),
        },
    }


async def ensure_certificate(
    client: Client,
    *,
    namespace: str,
    secret_name: str,
    hosts: Sequence[str],
    validity: datetime.timedelta,
    renew_before: datetime.timedelta,
    now: datetime.datetime | None = None,
) -> CertBundle:
    """The current certificate from the Secret, issued (or renewed) and stored when missing,
    expiring within `renew_before` or not covering `hosts`. Replicas racing to renew all end up
    with whichever write won."""
    for _ in range(5):
        current_time = now or datetime.datetime.now(datetime.UTC)
        secret = await client.get_or_none(kinds.SECRET, secret_name, namespace)
        bundle = _secret_bundle(secret) if secret is not None else None
        if bundle is not None and not bundle.needs_renewal(hosts, current_time, renew_before):
            return bundle
        fresh = issue(
            hosts, now=current_time, validity=validity, previous_ca_pem=bundle.ca_pem if bundle else b""
        )
        body = _secret_body(namespace, secret_name, fresh)
        try:
            if secret is None:
                await client.create(kinds.SECRET, body)
            else:
                body["metadata"]["resourceVersion"] = secret["metadata"]["resourceVersion"]
                await client.update(kinds.SECRET, body)
        except (AlreadyExists, Conflict):
            continue  # another replica wrote first: use its certificate
        log.info(
            "issued webhook certificate", extra={"secret": secret_name, "not_after": str(fresh.not_after)}
        )
        return fresh
    raise RuntimeError(f"could not store the webhook certificate in Secret {namespace}/{secret_name}")
