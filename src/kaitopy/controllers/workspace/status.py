"""The workspace's conditions, worked out from what was observed. Pure: the reconciler gathers
the objects, these functions say what the user should read, in words they can act on."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kaitopy.runtime.conditions import Status
from kaitopy.runtime.objects import Obj

NODECLAIM_READY = "NodeClaimReady"
RESOURCE_READY = "ResourceReady"
INFERENCE_READY = "InferenceReady"
JOB_STARTED = "JobStarted"
WORKSPACE_SUCCEEDED = "WorkspaceSucceeded"
WORKSPACE_DELETING = "WorkspaceDeleting"


@dataclass(frozen=True)
class Verdict:
    status: Status
    reason: str
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "True"


def _cond(obj: Obj, type_: str) -> dict[str, object] | None:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if c.get("type") == type_:
            return dict(c)
    return None


def nodeclaims_verdict(claims: Sequence[Obj], wanted: int) -> Verdict:
    """NodeClaimReady: every claim the workspace needs exists and is Ready; a failed claim's
    reason (quota, capacity, an unavailable SKU) is passed through as is."""
    for claim in claims:
        launched = _cond(claim, "Launched")
        if launched is not None and launched.get("status") == "False":
            name = claim["metadata"]["name"]
            return Verdict(
                "False",
                str(launched.get("reason") or "LaunchFailed"),
                f"node claim {name} failed to launch: {launched.get('message') or ''}".strip(),
            )
    ready = [c for c in claims if (_cond(c, "Ready") or {}).get("status") == "True"]
    if len(ready) >= wanted:
        return Verdict("True", "NodeClaimsReady", f"{len(ready)} node claim(s) ready")
    waiting = [c for c in claims if c not in ready]
    detail = ""
    if waiting:
        r = _cond(waiting[0], "Ready") or {}
        detail = f"; {waiting[0]['metadata']['name']}: {r.get('message') or r.get('reason') or 'launching'}"
    return Verdict(
        "False",
        "NodeClaimNotReady",
        f"{len(ready)} of {wanted} node claim(s) ready{detail}",
    )


def resource_verdict(ready_nodes: int, target: int, claims: Verdict | None, byo: bool) -> Verdict:
    if ready_nodes >= target:
        return Verdict("True", "WorkspaceResourceReady", f"{ready_nodes} GPU node(s) ready")
    if claims is not None and claims.status == "False" and claims.reason != "NodeClaimNotReady":
        return Verdict("False", claims.reason, claims.message)
    if byo:
        return Verdict(
            "False",
            "NodesNotFound",
            f"{ready_nodes} of {target} ready GPU node(s) match the label selector and instance type; "
            "in bring-your-own-nodes mode, label more nodes or lower the count",
        )
    return Verdict("False", "WaitingForNodes", f"{ready_nodes} of {target} GPU node(s) ready")


_IMAGE_PULL = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}


def pod_problem(pods: Iterable[Obj]) -> Verdict | None:
    """The most telling reason a workload's pods are not ready, if they show one."""
    for pod in pods:
        status = pod.get("status") or {}
        name = pod["metadata"]["name"]
        for cs in [*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())]:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in _IMAGE_PULL:
                return Verdict(
                    "False",
                    "ImagePullError",
                    f"pod {name} cannot pull image for container {cs.get('name')}: "
                    f"{waiting.get('message') or reason}",
                )
            last = (cs.get("lastState") or {}).get("terminated") or {}
            if last.get("reason") == "OOMKilled":
                return Verdict(
                    "False",
                    "OOMKilled",
                    f"pod {name} container {cs.get('name')} ran out of memory; "
                    "use a larger instance type or a smaller max-model-len",
                )
            if reason == "CrashLoopBackOff":
                return Verdict(
                    "False",
                    "CrashLoop",
                    f"pod {name} container {cs.get('name')} keeps crashing "
                    f"(exit code {last.get('exitCode', '?')}); see its logs",
                )
        for c in status.get("conditions") or ():
            if c.get("type") == "PodScheduled" and c.get("status") == "False":
                return Verdict(
                    "False", "Unschedulable", f"pod {name} cannot be scheduled: {c.get('message') or ''}"
                )
    return None


def workload_verdict(workload: Obj | None, pods: Sequence[Obj], want: int, revision: str) -> Verdict:
    if workload is None:
        return Verdict("False", "WorkloadNotCreated", "waiting for GPU nodes before deploying the model")
    status = workload.get("status") or {}
    meta = workload["metadata"]
    rolled_out = status.get("observedGeneration", 0) >= meta.get("generation", 0)
    current_pods = [
        p for p in pods if (p["metadata"].get("annotations") or {}).get("kaito.sh/revision") == revision
    ]
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    if rolled_out and ready >= want and updated >= want:
        return Verdict("True", "InferenceReady", f"{ready} of {want} model server pod(s) ready")
    problem = pod_problem(current_pods or pods)
    if problem is not None:
        return problem
    return Verdict(
        "False",
        "WorkloadNotReady",
        f"{min(ready, updated)} of {want} model server pod(s) ready; waiting for the model to load",
    )


def workload_refused(status: int, reason: str, message: str) -> Verdict:
    """The API server refused to store the model's workload (a full service IP range, a quota,
    an admission policy): say so in its words, since only the cluster's admin can fix it."""
    return Verdict(
        "False",
        "WorkloadRefused",
        f"the API server refused the model's workload ({status} {reason}): {message}",
    )


def job_verdicts(job: Obj | None, pods: Sequence[Obj]) -> tuple[Verdict, Verdict]:
    """(JobStarted, WorkspaceSucceeded) for a tuning workspace."""
    if job is None:
        return (
            Verdict("False", "JobNotCreated", "waiting for GPU nodes before starting the tuning job"),
            Verdict("False", "JobNotCreated", "the tuning job has not started"),
        )
    status = job.get("status") or {}
    started = Verdict("True", "JobStarted", f"tuning job {job['metadata']['name']} created")
    for c in status.get("conditions") or ():
        if c.get("type") == "Complete" and c.get("status") == "True":
            return started, Verdict(
                "True", "TuningJobSucceeded", "the tuning job completed; the adapter is ready"
            )
        if c.get("type") == "Failed" and c.get("status") == "True":
            return started, Verdict(
                "False",
                "TuningJobFailed",
                f"the tuning job failed: {c.get('reason')}: {c.get('message') or ''}",
            )
    problem = pod_problem(pods)
    if problem is not None:
        return started, problem
    return started, Verdict("False", "TuningJobRunning", f"{status.get('active', 0)} tuning pod(s) active")
