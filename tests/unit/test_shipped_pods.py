"""The operator's own pods as shipped: no Docker-link variables in their environment. A Service
named kaitopy-activator once set KAITOPY_ACTIVATOR_PORT=tcp://... in every pod of its namespace,
where the activator read its own listen port, and the activator crashed at start."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def test_every_shipped_deployment_turns_service_links_off() -> None:
    found = {}
    for path in sorted((REPO / "manifests" / "base").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Deployment":
                found[doc["metadata"]["name"]] = doc["spec"]["template"]["spec"].get("enableServiceLinks")
    assert set(found) >= {"kaitopy-controller", "kaitopy-provisioner", "kaitopy-activator"}
    assert all(v is False for v in found.values()), found


def test_no_setting_is_read_from_a_name_a_service_link_could_set() -> None:
    # Docker-link names of our Services: <NAME>_PORT, <NAME>_PORT_*, <NAME>_SERVICE_*.
    services = [
        "KAITOPY_ACTIVATOR",
        "KAITOPY_WEBHOOK",
        "KAITOPY_CONTROLLER_METRICS",
        "KAITOPY_PROVISIONER_METRICS",
    ]
    source = "\n".join(p.read_text() for p in (REPO / "src" / "kaitopy").rglob("*.py"))
    for name in services:
        for suffix in ('_PORT"', "_PORT_", "_SERVICE_HOST", "_SERVICE_PORT"):
            assert f'"{name}{suffix}' not in source, f"{name}{suffix}"
