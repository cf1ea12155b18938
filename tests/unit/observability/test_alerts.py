"""kaitopy's alerts (manifests/observability/alerts): promtool accepts them, `promtool test rules`
passes with a firing case and a quiet one for every alert, each says what to check and links the
docs, and the PrometheusRule carries exactly the plain rules file's groups."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
ALERTS = REPO / "manifests" / "observability" / "alerts"
RULES = ALERTS / "kaitopy.rules.yaml"
CASES = Path(__file__).with_name("alerts_test.yaml")
TROUBLESHOOTING = "docs/operations.md#troubleshooting-by-condition-reason"


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is missing: hack/ensure-packages.sh installs Debian's prometheus package")
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_promtool_accepts_the_rules_file() -> None:
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_pass() -> None:
    proc = promtool("test", "rules", CASES.name, cwd=CASES.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = yaml.safe_load(CASES.read_text())["tests"]
    checks = [c for t in cases for c in t.get("alert_rule_test") or ()]
    for rule in alert_rules():
        mine = [c for c in checks if c["alertname"] == rule["alert"]]
        assert any(c.get("exp_alerts") for c in mine), f"{rule['alert']}: no case where it fires"
        assert any(not c.get("exp_alerts") for c in mine), f"{rule['alert']}: no case where it stays quiet"


def test_the_required_alerts_are_there() -> None:
    names = {r["alert"] for r in alert_rules()}
    assert names >= {
        "KaitopyWorkspaceNotReady",
        "KaitopyNodeClaimStuckLaunching",
        "KaitopyLeakedInstances",
        "KaitopyReconcileErrors",
        "KaitopyWorkQueueBacklog",
        "KaitopyWorkQueueStuck",
        "KaitopyNoLeader",
        "KaitopyLeadershipLost",
        "KaitopyModelServerQueueGrowing",
        "KaitopyModelServerErrors",
    }


def test_each_alert_says_what_to_check_and_links_the_docs() -> None:
    operations = (REPO / "docs" / "operations.md").read_text()
    assert "\n### Alerts\n" in operations
    assert "\n## Troubleshooting by condition reason\n" in operations
    for rule in alert_rules():
        notes = rule["annotations"]
        assert "Check" in notes["description"], rule["alert"]
        assert TROUBLESHOOTING in notes["description"], rule["alert"]
        assert notes["runbook_url"] == "docs/operations.md#alerts", rule["alert"]
        assert f"`{rule['alert']}`" in operations, (
            f"docs/operations.md#alerts does not explain {rule['alert']}"
        )


def test_the_prometheusrule_carries_the_rules_file_unchanged() -> None:
    docs = [d for d in yaml.safe_load_all((ALERTS / "prometheusrule.yaml").read_text()) if d]
    (rule,) = docs
    assert rule["kind"] == "PrometheusRule" and rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
