"""The ValidatingWebhookConfiguration shipped in manifests/ is the one the webhook describes
(`WebhookServer.configuration()`), so installing from manifests judges exactly what a development
run that registers itself judges: both operations, fail closed, updates only when the spec changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kaitopy.presets import Catalog
from kaitopy.runtime import Client
from kaitopy.webhooks.server import WebhookServer, WebhookSettings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]


def _shipped() -> dict[str, Any]:
    docs = yaml.safe_load_all((REPO / "manifests" / "base" / "webhook.yaml").read_text())
    return next(d for d in docs if d["kind"] == "ValidatingWebhookConfiguration")


def test_shipped_webhooks_are_the_described_ones() -> None:
    server = WebhookServer(Client.__new__(Client), WebhookSettings(), catalog=Catalog.load())
    described = server.configuration()
    shipped = _shipped()
    assert (
        shipped["metadata"]["name"] == described["metadata"]["name"] == WebhookSettings().configuration_name
    )
    assert shipped["webhooks"] == described["webhooks"]
    assert [h["failurePolicy"] for h in shipped["webhooks"]] == ["Fail", "Fail"]
    update = shipped["webhooks"][1]
    assert (
        update["rules"][0]["operations"] == ["UPDATE"]
        and update["matchConditions"][0]["name"] == "spec-changed"
    )
    assert all("caBundle" not in h["clientConfig"] for h in shipped["webhooks"])  # injected at run time
