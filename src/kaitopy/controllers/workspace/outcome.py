"""What a workspace reports once its parts are judged: the conditions that roll the verdicts up
(WorkspaceSucceeded) and the one-word state. Pure: the verdicts come from status.py, the
reconciler writes the result."""

from __future__ import annotations

from dataclasses import dataclass

from kaitopy.controllers.workspace import status as st


@dataclass(frozen=True)
class Outcome:
    conditions: tuple[tuple[str, st.Verdict], ...]
    """(condition type, verdict) to set, in order."""
    state: str


SERVED = st.Verdict("True", "WorkspaceSucceeded", "the model is being served")


def inference_outcome(resource: st.Verdict, workload: st.Verdict) -> Outcome:
    """Served once the nodes and the workload are both ready; otherwise the first part that is
    not says why (the nodes before the workload: no workload runs without them)."""
    done = resource.ok and workload.ok
    if done:
        succeeded = SERVED
    else:
        why = workload if resource.ok else resource
        succeeded = st.Verdict("False", why.reason, why.message)
    state = "Ready" if done else ("NotReady" if resource.ok else "Pending")
    return Outcome(((st.INFERENCE_READY, workload), (st.WORKSPACE_SUCCEEDED, succeeded)), state)


def tuning_outcome(started: st.Verdict, succeeded: st.Verdict) -> Outcome:
    if succeeded.ok:
        state = "Succeeded"
    elif succeeded.reason == "TuningJobFailed":
        state = "Failed"
    else:
        state = "Running" if started.ok else "Pending"
    return Outcome(((st.JOB_STARTED, started), (st.WORKSPACE_SUCCEEDED, succeeded)), state)


def unplannable_outcome(reason: str, message: str, *, tuning: bool) -> Outcome:
    """A workspace that cannot be planned: a tuning run has failed for good; an inference
    workspace is not ready (an edit or a new catalog may make it plannable)."""
    return Outcome(
        ((st.WORKSPACE_SUCCEEDED, st.Verdict("False", reason, message)),),
        "Failed" if tuning else "NotReady",
    )
