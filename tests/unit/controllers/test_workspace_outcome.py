"""The workspace's roll-up (WorkspaceSucceeded and state) from its parts' verdicts: a table."""

from __future__ import annotations

import pytest

from kaitopy.controllers.workspace import status as st
from kaitopy.controllers.workspace.outcome import inference_outcome, tuning_outcome, unplannable_outcome

V = st.Verdict
NODES_OK = V("True", "ResourcesReady", "1 GPU node(s) ready")
NO_NODES = V("False", "WaitingForNodes", "0 of 1")
SERVING = V("True", "InferenceReady", "1 of 1 ready")
ROLLING = V("True", "RollingOut", "served by the previous revision")
LOADING = V("False", "WorkloadNotReady", "waiting for the model to load")

INFERENCE = {
    "served": (NODES_OK, SERVING, ("True", "WorkspaceSucceeded"), "Ready"),
    "served while rolling out": (NODES_OK, ROLLING, ("True", "WorkspaceSucceeded"), "Ready"),
    "loading: the workload says why": (NODES_OK, LOADING, ("False", "WorkloadNotReady"), "NotReady"),
    "no nodes: the nodes say why": (NO_NODES, LOADING, ("False", "WaitingForNodes"), "Pending"),
    "nodes lost under a served model": (NO_NODES, SERVING, ("False", "WaitingForNodes"), "Pending"),
}


@pytest.mark.parametrize("case", list(INFERENCE), ids=list(INFERENCE))
def test_inference_outcome(case: str) -> None:
    resource, workload, (status, reason), state = INFERENCE[case]
    out = inference_outcome(resource, workload)
    kinds = dict(out.conditions)
    assert [t for t, _ in out.conditions] == [st.INFERENCE_READY, st.WORKSPACE_SUCCEEDED]
    assert kinds[st.INFERENCE_READY] == workload
    assert (kinds[st.WORKSPACE_SUCCEEDED].status, kinds[st.WORKSPACE_SUCCEEDED].reason) == (status, reason)
    assert out.state == state


STARTED = V("True", "JobStarted", "created")
NOT_STARTED = V("False", "WaitingForNodes", "")
TUNING = {
    "waiting": (NOT_STARTED, V("False", "WaitingForNodes", ""), "Pending"),
    "running": (STARTED, V("False", "TuningJobRunning", ""), "Running"),
    "failed": (STARTED, V("False", "TuningJobFailed", ""), "Failed"),
    "succeeded": (STARTED, V("True", "TuningJobSucceeded", ""), "Succeeded"),
}


@pytest.mark.parametrize("case", list(TUNING), ids=list(TUNING))
def test_tuning_outcome(case: str) -> None:
    started, succeeded, state = TUNING[case]
    out = tuning_outcome(started, succeeded)
    assert out.conditions == ((st.JOB_STARTED, started), (st.WORKSPACE_SUCCEEDED, succeeded))
    assert out.state == state


@pytest.mark.parametrize(("tuning", "state"), [(True, "Failed"), (False, "NotReady")])
def test_an_unplannable_workspace(tuning: bool, state: str) -> None:
    out = unplannable_outcome("InvalidPreset", "no such preset", tuning=tuning)
    assert out.conditions == ((st.WORKSPACE_SUCCEEDED, V("False", "InvalidPreset", "no such preset")),)
    assert out.state == state
