"""The reasons a Workspace's conditions give, grouped by what it takes to get past them, and the
fix `kaitopy status` suggests for each. One list for the controller's metrics, the CLI and docs."""

from __future__ import annotations

from typing import Final

SPEC_INVALID: Final = frozenset(
    {"InvalidPreset", "InvalidInstanceType", "InsufficientGPUMemory", "InvalidWorkspace", "InvalidRuntime"}
)
"""The planner's: the spec can never run as written."""

CLOUD_REFUSED: Final = frozenset(
    {"LaunchFailed", "QuotaExceeded", "InsufficientCapacity", "SKUNotAvailable", "InvalidRequest"}
)
"""The provisioner's, passed through NodeClaimReady/ResourceReady: the cloud said no."""

TERMINAL: Final = SPEC_INVALID | CLOUD_REFUSED | {"TuningJobFailed"}
"""No progress until the spec or the cloud changes: the workspace counts as failed."""

WORKLOAD_FAILING: Final = frozenset(
    {
        "ImagePullError",
        "ContainerConfigError",
        "VolumeMountFailed",
        "SandboxFailed",
        "OOMKilled",
        "CrashLoop",
        "ReadinessProbeFailing",
        "Unschedulable",
        "PodsRefused",
        "WorkloadRefused",
    }
)
"""The workload's pods cannot get further as things stand. Kubernetes keeps retrying (a pushed
image, a created Secret or a lifted quota lets them through), so these are not terminal, but
someone has to act."""

NEEDS_ACTION: Final = TERMINAL | WORKLOAD_FAILING
"""What `kaitopy status --wait` stops on: waiting longer would not help."""

FIXES: Final[dict[str, str]] = {
    "InvalidPreset": "pick a preset from `kaitopy presets`",
    "InvalidInstanceType": "use an instance type the catalog knows (the message says which it cannot find)",
    "InsufficientGPUMemory": "use an instance type with more GPU memory, or more nodes "
    "(`kaitopy estimate --preset P --instance-type T`)",
    "QuotaExceeded": "raise the subscription's GPU quota for the instance type, or use another one",
    "InsufficientCapacity": "try another region or instance type; the cloud has none free",
    "SKUNotAvailable": "use an instance type the region offers",
    "ImagePullError": "check that the image name and tag exist in the registry and that the pull "
    "secret (imagePullSecrets) names a Secret in the workspace's namespace that can read it",
    "ContainerConfigError": "create the Secret or ConfigMap the pod refers to, or fix the reference",
    "VolumeMountFailed": "create the Secret or ConfigMap the volume names (e.g. the push secret), "
    "in the workspace's namespace",
    "SandboxFailed": "the node could not start the pod; see the node's kubelet and runtime logs",
    "OOMKilled": "give the model more memory: a larger instance type, a smaller max-model-len, "
    "or a higher memory limit in the template",
    "CrashLoop": "read the container's last words in the message (or `kubectl logs --previous`) "
    "and fix the argument or config it names",
    "ReadinessProbeFailing": "the server runs but its readiness probe fails: check the probe's "
    "path and port, and the server's logs",
    "Unschedulable": "lower the pod's requests to what the node has, or use a larger instance type",
    "PodsRefused": "an admission policy or quota refused the pods: ask the cluster admin, or change "
    "the template to comply",
    "WorkloadRefused": "an admission policy or quota refused the workload: ask the cluster admin",
    "TuningJobFailed": "read the job's pod logs; fix the input data or the tuning config",
}
"""What to do, per reason, in a sentence."""
