"""decide_claim over what a pass observed: launch, register, initialize and their timeouts, as
plain data (the lifecycle's integration tests run the same code against the control plane)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kaitopy.api.nodeclaim import NODECLAIM_LABEL
from kaitopy.provisioner.claimdecision import ClaimObserved, decide_claim
from kaitopy.provisioner.cloudprovider import Instance, LaunchProgress
from kaitopy.provisioner.nodeclaim import INITIALIZED_LABEL, initial_conditions, launch_request_for
from kaitopy.provisioner.settings import ProvisionerSettings
from kaitopy.runtime import find_condition, set_condition
from tests.unit.provisioner.test_nodeclaim import claim, node

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC).timestamp()
SETTINGS = ProvisionerSettings(launch_timeout_s=600, registration_timeout_s=300, poll_interval_s=5)


def seen(c: dict[str, Any], *, at: float = T0, **conditions: tuple[str, str]) -> dict[str, Any]:
    """`c` with the conditions the lifecycle wrote at `at` (its own clock), then `conditions`."""
    now = datetime.fromtimestamp(at, UTC)
    conds = initial_conditions(now, None)
    for type_, (status, reason) in conditions.items():
        conds = set_condition(conds, type_, status, reason=reason, now=now)  # type: ignore[arg-type]
    return {
        **c,
        "metadata": {**c["metadata"], "creationTimestamp": "2020-01-01T00:00:00Z"},
        "status": {"conditions": conds},
    }


def observed(c: dict[str, Any], **more: Any) -> ClaimObserved:
    return ClaimObserved(c, launch_request_for(c), **more)


def cond(status: Any, type_: str) -> dict[str, Any]:
    return dict(find_condition(status["conditions"], type_) or {})


LAUNCHING = LaunchProgress(None, "pool creating")
DONE = LaunchProgress(Instance("pool1", "Standard_NC6s_v3", "running", provider_id="azure:///pool1"))


def test_a_new_claim_begins_its_launch() -> None:
    d = decide_claim(observed(claim()), T0, SETTINGS)
    assert d.begin_launch and d.events == ()


def test_launching_within_the_timeout_polls_again() -> None:
    # creationTimestamp says 2020: the age comes from the lifecycle's own record, not from it.
    d = decide_claim(observed(seen(claim()), token="t", progress=LAUNCHING), T0 + 590, SETTINGS)
    assert cond(d.status, "Launched")["reason"] == "Launching"
    assert d.requeue_after == 5 and d.delete_reason is None


def test_a_launch_past_its_timeout_gives_the_claim_up() -> None:
    d = decide_claim(observed(seen(claim()), token="t", progress=LAUNCHING), T0 + 601, SETTINGS)
    assert cond(d.status, "Launched")["reason"] == "LaunchTimeout"
    assert d.delete_reason == "LaunchTimeout" and "pool creating" in d.notes[0]


def test_a_failed_launch_is_terminal_and_said_once() -> None:
    d = decide_claim(observed(seen(claim()), launch_failed=("QuotaExceeded", "no quota")), T0, SETTINGS)
    assert cond(d.status, "Launched")["status"] == "False"
    assert [e.reason for e in d.events] == ["QuotaExceeded"]
    again = decide_claim(observed({**seen(claim()), "status": d.status}, token="t"), T0 + 5, SETTINGS)
    assert not again.begin_launch and again.events == ()  # never relaunched: the owner replaces it


def test_an_unlaunchable_spec_is_an_invalid_request() -> None:
    d = decide_claim(ClaimObserved(seen(claim()), None, "requirements: no instance type"), T0, SETTINGS)
    assert cond(d.status, "Launched")["reason"] == "InvalidRequest"


def test_launched_node_not_joined_waits_then_times_out() -> None:
    launched = seen(claim(), Launched=("True", "Launched"))
    waiting = decide_claim(observed(launched, token="t"), T0 + 200, SETTINGS)
    assert cond(waiting.status, "Registered")["reason"] == "NodeNotFound" and waiting.requeue_after == 5
    late = decide_claim(observed(launched, token="t"), T0 + 301, SETTINGS)
    assert late.delete_reason == "RegistrationTimeout"


def test_launch_done_and_node_there_registers_it_first() -> None:
    c = {**seen(claim()), "metadata": {**claim()["metadata"], "uid": "u-1"}}
    d = decide_claim(observed(c, token="t", progress=DONE, node=node()), T0, SETTINGS)
    assert d.adopt is not None and d.adopt.labels[NODECLAIM_LABEL] == "ws1a2b3c"


def test_a_registered_ready_node_initializes_the_claim() -> None:
    c = seen(claim())
    d = decide_claim(observed(c, token="t", progress=DONE, node=node(), adopted=True), T0, SETTINGS)
    assert [e.reason for e in d.events] == ["Launched", "Registered", "Initialized"]
    assert cond(d.status, "Ready")["status"] == "True"
    assert d.status["nodeName"] == "n1" and d.label_initialized
    n = node()
    n["metadata"]["labels"][INITIALIZED_LABEL] = "true"
    ready = {**c, "status": d.status}
    again = decide_claim(observed(ready, token="t", node=n, adopted=True), T0 + 5, SETTINGS)
    assert again.events == () and not again.label_initialized  # nothing new: nothing said


def test_a_node_not_ready_leaves_the_claim_uninitialized() -> None:
    d = decide_claim(
        observed(seen(claim()), token="t", progress=DONE, node=node(ready=False), adopted=True), T0, SETTINGS
    )
    assert cond(d.status, "Initialized")["reason"] == "NodeNotReady"
    assert cond(d.status, "Ready")["status"] == "Unknown"
