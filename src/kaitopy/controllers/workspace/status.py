"""The workspace's conditions, worked out from what was observed. Pure: the reconciler gathers
the objects, these functions say what the user should read, in words they can act on."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kaitopy.api import constants
from kaitopy.api import nodeclaim as nc
from kaitopy.runtime.conditions import Status
from kaitopy.runtime.objects import Obj

# The workspace's condition types are the API's (kaitopy.api.constants): defined there once.
NODECLAIM_READY = constants.NodeClaimReady
RESOURCE_READY = constants.ResourceReady
INFERENCE_READY = constants.InferenceReady
JOB_STARTED = constants.JobStarted
WORKSPACE_SUCCEEDED = constants.WorkspaceSucceeded
WORKSPACE_DELETING = constants.WorkspaceDeleting


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


def condition_true(obj: Obj, type_: str) -> bool:
    return (_cond(obj, type_) or {}).get("status") == "True"


def nodeclaims_verdict(claims: Sequence[Obj], wanted: int) -> Verdict:
    """NodeClaimReady: every claim the workspace needs exists and is Ready; a failed claim's
    reason (quota, capacity, an unavailable SKU) is passed through as is, and so is a lost node
    (the provisioner marks its claim Ready=False InstanceLost, or NodeUnhealthy, before deleting it)."""
    for claim in claims:
        lost = _cond(claim, nc.READY) or {}
        if lost.get("reason") in nc.REPAIRED_REASONS:
            return Verdict("False", "NodeLost", str(lost.get("message") or "").strip())
        launched = _cond(claim, nc.LAUNCHED)
        if launched is not None and launched.get("status") == "False":
            name = claim["metadata"]["name"]
            return Verdict(
                "False",
                str(launched.get("reason") or "LaunchFailed"),
                f"node claim {name} failed to launch: {launched.get('message') or ''}".strip(),
            )
    ready = [c for c in claims if (_cond(c, nc.READY) or {}).get("status") == "True"]
    if len(ready) >= wanted:
        return Verdict("True", "NodeClaimsReady", f"{len(ready)} node claim(s) ready")
    waiting = [c for c in claims if c not in ready]
    detail = ""
    if waiting:
        r = _cond(waiting[0], nc.READY) or {}
        detail = f"; {waiting[0]['metadata']['name']}: {r.get('message') or r.get('reason') or 'launching'}"
    return Verdict(
        "False",
        "NodeClaimNotReady",
        f"{len(ready)} of {wanted} node claim(s) ready{detail}",
    )


def resource_verdict(ready_nodes: int, target: int, claims: Verdict | None, byo: bool) -> Verdict:
    if claims is not None and claims.reason == "NodeLost":
        return claims  # its Node may still be listed Ready: the node controller has not noticed yet
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
_START_FAILED = {"CreateContainerError", "RunContainerError"}
LAST_WORDS_CHARS = 400
"""How much of a dead container's last output a condition message carries (the kubelet keeps up
to 4 KiB of it, or 80 lines, as the termination message)."""


def _last_words(term: Obj) -> str:
    """A dead container's last output, as a condition can carry it: its last error line when it
    logged one (a server says why, then how it stops), else the end of what it wrote."""
    lines = [" ".join(line.split()) for line in str(term.get("message") or "").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return ""
    errors = [line for line in lines if "error" in line.lower()]
    text = errors[-1] if errors else " ".join(lines)
    return "; it said: " + (text if len(text) <= LAST_WORDS_CHARS else "..." + text[-LAST_WORDS_CHARS:])


def _container_problem(pod_name: str, cs: Obj) -> Verdict | None:
    name = cs.get("name")
    state = cs.get("state") or {}
    waiting = state.get("waiting") or {}
    reason = waiting.get("reason")
    detail = waiting.get("message") or reason
    if reason in _IMAGE_PULL:
        return Verdict(
            "False", "ImagePullError", f"pod {pod_name} cannot pull the image of container {name}: {detail}"
        )
    if reason == "CreateContainerConfigError":
        return Verdict(
            "False",
            "ContainerConfigError",
            f"pod {pod_name} cannot configure container {name}: {detail}",
        )
    last = state.get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
    if last.get("reason") == "OOMKilled":
        return Verdict(
            "False",
            "OOMKilled",
            f"pod {pod_name} container {name} ran out of memory (limit "
            f"{_memory_limit(cs) or 'unknown'}); use a larger instance type, a smaller max-model-len "
            "or a higher memory limit",
        )
    if reason in _START_FAILED:
        return Verdict("False", "CrashLoop", f"pod {pod_name} container {name} cannot start: {detail}")
    if reason == "CrashLoopBackOff":
        return Verdict(
            "False",
            "CrashLoop",
            f"pod {pod_name} container {name} keeps crashing (exit code {last.get('exitCode', '?')}, "
            f"{cs.get('restartCount', 0)} restarts){_last_words(last)}",
        )
    return None


def _memory_limit(cs: Obj) -> str | None:
    # Container statuses carry the resources the kubelet applied (1.33+); older ones do not.
    return (((cs.get("resources") or {}).get("limits")) or {}).get("memory")


def pod_problem(pods: Iterable[Obj]) -> Verdict | None:
    """The most telling reason a workload's pods are not ready, if their status shows one."""
    for pod in pods:
        status = pod.get("status") or {}
        name = pod["metadata"]["name"]
        for cs in [*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())]:
            problem = _container_problem(name, cs)
            if problem is not None:
                return problem
        for c in status.get("conditions") or ():
            if c.get("type") == "PodScheduled" and c.get("status") == "False":
                return Verdict(
                    "False", "Unschedulable", f"pod {name} cannot be scheduled: {c.get('message') or ''}"
                )
    return None


READINESS_FAILURES_TO_REPORT = 3
"""Readiness probe failures (after the start-up probe passed, if any) before the workspace says
the probe is failing rather than that the model is loading."""


def events_problem(pod: Obj, events: Sequence[Obj]) -> Verdict | None:
    """What the kubelet's events about `pod` say is stopping it, when its status does not say:
    a volume that cannot be mounted (a missing Secret), a sandbox that cannot be made, a
    readiness probe that keeps failing."""
    name = pod["metadata"]["name"]
    newest = sorted(events, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    for e in reversed(newest):
        if e.get("type") != "Warning":
            continue
        reason, message, count = e.get("reason"), str(e.get("message") or ""), int(e.get("count") or 1)
        if reason == "FailedMount":
            return Verdict("False", "VolumeMountFailed", f"pod {name} cannot start: {message}")
        if reason == "FailedCreatePodSandBox":
            return Verdict("False", "SandboxFailed", f"pod {name} has no sandbox on its node: {message}")
        if (
            reason == "Unhealthy"
            and message.startswith("Readiness probe failed")
            and count >= READINESS_FAILURES_TO_REPORT
        ):
            return Verdict(
                "False",
                "ReadinessProbeFailing",
                f"pod {name} runs but is not ready ({count} times): {message}",
            )
    return None


def replica_failure(workload: Obj) -> Verdict | None:
    """A Deployment whose pods the API server refuses (Pod Security, a quota, a webhook) says so in
    its ReplicaFailure condition; nothing else would: there is no pod to look at."""
    for c in (workload.get("status") or {}).get("conditions") or ():
        if c.get("type") == "ReplicaFailure" and c.get("status") == "True":
            return Verdict(
                "False",
                "PodsRefused",
                f"the API server refuses the model's pods ({c.get('reason')}): {c.get('message') or ''}",
            )
    return None


def rollout_complete(workload: Obj | None, want: int) -> bool:
    """Every pod is of the workload's current spec and ready, and no older pod is left (kubectl
    rollout status's rule)."""
    if workload is None:
        return False
    status = workload.get("status") or {}
    rolled_out = status.get("observedGeneration", 0) >= workload["metadata"].get("generation", 0)
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    pods = int(status.get("replicas") or 0)
    return rolled_out and updated >= want and ready >= want and pods <= updated


def _ready(pod: Obj) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or ()
    )


def workload_verdict(workload: Obj | None, pods: Sequence[Obj], want: int, revision: str) -> Verdict:
    if workload is None:
        return Verdict("False", "WorkloadNotCreated", "waiting for GPU nodes before deploying the model")
    status = workload.get("status") or {}
    meta = workload["metadata"]
    rolled_out = status.get("observedGeneration", 0) >= meta.get("generation", 0)
    current_pods = current_revision_pods(pods, revision)
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    if rollout_complete(workload, want):
        return Verdict("True", "InferenceReady", f"{ready} of {want} model server pod(s) ready")
    problem = pod_problem(current_pods or pods) or replica_failure(workload)
    if rolled_out and ready >= want and int(status.get("replicas") or 0) > updated:
        # A rolling update: the previous revision's pods serve until the new ones are ready.
        fresh = sum(1 for p in current_pods if _ready(p))
        stuck = f"; {problem.message}" if problem is not None else ""
        return Verdict(
            "True",
            "RollingOut",
            f"served by the previous revision while {revision} rolls out "
            f"({fresh} of {want} new pod(s) ready){stuck}",
        )
    if problem is not None:
        return problem
    return Verdict(
        "False",
        "WorkloadNotReady",
        f"{min(ready, updated)} of {want} model server pod(s) ready; waiting for the model to load",
    )


def current_revision_pods(pods: Sequence[Obj], revision: str) -> list[Obj]:
    return [p for p in pods if (p["metadata"].get("annotations") or {}).get("kaito.sh/revision") == revision]


def unready_pod(pods: Sequence[Obj]) -> Obj | None:
    """The oldest pod that is not Ready, whose events may tell what its status does not."""
    waiting = [p for p in pods if not p["metadata"].get("deletionTimestamp") and not _ready(p)]
    return min(waiting, key=lambda p: str(p["metadata"].get("creationTimestamp") or ""), default=None)


def workload_refused(status: int, reason: str, message: str) -> Verdict:
    """The API server refused to store the model's workload (a full service IP range, a quota,
    an admission policy): say so in its words, since only the cluster's admin can fix it."""
    return Verdict(
        "False",
        "WorkloadRefused",
        f"the API server refused the model's workload ({status} {reason}): {message}",
    )


def failed_step(pods: Sequence[Obj]) -> str:
    """Which step of the newest failed tuning pod failed, with its last words."""
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    for pod in sorted(failed, key=lambda p: str(p["metadata"].get("creationTimestamp")), reverse=True):
        status = pod.get("status") or {}
        for cs in [*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())]:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term.get("exitCode", 0) != 0:
                return f"; step {cs.get('name')} exited with code {term.get('exitCode')}{_last_words(term)}"
    return ""


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
                f"the tuning job failed: {c.get('reason')}: {c.get('message') or ''}{failed_step(pods)}",
            )
    problem = pod_problem(pods)
    if problem is not None:
        return started, problem
    return started, Verdict("False", "TuningJobRunning", f"{status.get('active', 0)} tuning pod(s) active")
