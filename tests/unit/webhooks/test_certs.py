"""The webhook certificate: what it covers, when it is renewed, and the CA overlap on renewal."""

from __future__ import annotations

import datetime

from cryptography import x509

from kaitopy.webhooks.certs import issue

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def test_issue_covers_the_hosts_and_chains_to_the_ca() -> None:
    b = issue(["127.0.0.1", "kaitopy-webhook.kaito-system.svc"], now=NOW, validity=90 * DAY)
    assert b.hosts() == {"127.0.0.1", "kaitopy-webhook.kaito-system.svc"}
    ca = x509.load_pem_x509_certificates(b.ca_pem)
    assert len(ca) == 1
    b.leaf.verify_directly_issued_by(ca[0])
    assert b.not_after == NOW + 90 * DAY


def test_renewal_before_expiry_or_for_new_hosts() -> None:
    b = issue(["a.svc"], now=NOW, validity=90 * DAY)
    assert not b.needs_renewal(["a.svc"], NOW + 59 * DAY, 30 * DAY)
    assert b.needs_renewal(["a.svc"], NOW + 61 * DAY, 30 * DAY)
    assert b.needs_renewal(["b.svc"], NOW, 30 * DAY)


def test_renewed_bundle_keeps_the_previous_ca_until_it_expires() -> None:
    old = issue(["a.svc"], now=NOW, validity=90 * DAY)
    new = issue(["a.svc"], now=NOW + 61 * DAY, validity=90 * DAY, previous_ca_pem=old.ca_pem)
    cas = x509.load_pem_x509_certificates(new.ca_pem)
    assert len(cas) == 2
    new.leaf.verify_directly_issued_by(cas[0])
    old.leaf.verify_directly_issued_by(cas[1])
    # A third renewal drops the oldest CA: the bundle never grows past two.
    newest = issue(["a.svc"], now=NOW + 122 * DAY, validity=90 * DAY, previous_ca_pem=new.ca_pem)
    assert len(x509.load_pem_x509_certificates(newest.ca_pem)) == 2
