"""The fault suite's judgements of the cloud traffic it sees: they must tell a provisioner that
waits as told from one that hammers the API (otherwise the azure scenarios could never fail)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.cloud import peak_rate
from tests.chaos.suite import Violation, check_no_request_storm, check_retry_after_honoured
from tests.support.fake_arm import Behavior, FakeArm
from tests.support.tls import ServerCert


def arm_with(times: list[float], throttled: list[float] | None = None) -> FakeArm:
    arm = FakeArm(ServerCert(Path("ca.pem"), Path("cert.pem"), Path("key.pem")), behavior=Behavior())
    arm.request_times = times
    arm.throttled_times = throttled or []
    return arm


def test_peak_rate_counts_the_busiest_window() -> None:
    assert peak_rate([], 1.0) == 0
    assert peak_rate([0.0, 0.1, 0.2, 5.0], 1.0) == 3
    assert peak_rate([0.0, 1.5, 3.0, 3.1, 3.2, 3.3], 1.0) == 4


def test_polling_at_the_interval_is_no_storm() -> None:
    # Two claims, looked at every 0.5 s for 10 s, one request a look, plus 8 faulted answers.
    times = sorted([i * 0.5 for i in range(20)] * 2 + [0.01 * i for i in range(8)])
    verdict = check_no_request_storm(arm_with(times), 0, faults=8, launches=2)
    assert "48 ARM requests" in verdict


def test_a_hot_loop_is_a_storm() -> None:
    times = [i * 0.005 for i in range(400)]  # 200 requests a second, as a loop without backoff makes
    with pytest.raises(Violation, match="hot loop"):
        check_no_request_storm(arm_with(times), 0, faults=8, launches=2)


def test_retry_after_judgement() -> None:
    honoured = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 2.0]  # three callers, each waiting 1 s between tries
    assert "honoured" in check_retry_after_honoured(arm_with([], honoured), callers=3)
    ignored = [i * 0.01 for i in range(8)]
    with pytest.raises(Violation, match="not respected"):
        check_retry_after_honoured(arm_with([], ignored), callers=3)
