"""Names of the Workspace API: its group, versions, kind and condition types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from kaitopy.runtime.kinds import Kind

GROUP: Final = "kaito.sh"
STORAGE_VERSION: Final = "v1beta1"
SERVED_VERSIONS: Final = ("v1alpha1", "v1beta1")
WORKSPACE_KIND: Final = "Workspace"
WORKSPACE_PLURAL: Final = "workspaces"
WORKSPACE_SINGULAR: Final = "workspace"
WORKSPACE_SHORT_NAMES: Final = ("wk", "wks")

WORKSPACE: Final = Kind(GROUP, STORAGE_VERSION, WORKSPACE_KIND, WORKSPACE_PLURAL)
WORKSPACE_V1ALPHA1: Final = Kind(GROUP, "v1alpha1", WORKSPACE_KIND, WORKSPACE_PLURAL)

RUNTIME_ANNOTATION: Final = "kaito.sh/runtime"
"""Kaito's annotation choosing the model server's engine for a preset."""
RUNTIMES: Final = ("vllm", "transformers")

INFERENCESET_KIND: Final = "InferenceSet"
INFERENCESET_PLURAL: Final = "inferencesets"
INFERENCESET_SINGULAR: Final = "inferenceset"
INFERENCESET_SHORT_NAMES: Final = ("is", "isets")
# Kaito serves InferenceSet at v1beta1 only.
INFERENCESET: Final = Kind(GROUP, STORAGE_VERSION, INFERENCESET_KIND, INFERENCESET_PLURAL)
InferenceSetReady: Final = "InferenceSetReady"
NodeCountLimitReached: Final = "NodeCountLimitReached"


# Kaito kinds kaitopy does not serve yet. Their CRDs are shipped (versions as Kaito serves them) so
# that `kubectl apply` reaches our webhook, which refuses every create saying so, rather than
# kubectl's "no matches for kind ... ensure CRDs are installed first".
@dataclass(frozen=True)
class UnservedKind:
    plural: str
    singular: str
    short_names: tuple[str, ...]
    versions: tuple[str, ...]
    storage: str
    why: str


UNSERVED_KINDS: Final = {
    "RAGEngine": UnservedKind(
        plural="ragengines",
        singular="ragengine",
        short_names=("rag",),
        versions=("v1alpha1", "v1beta1"),
        storage="v1beta1",
        why="retrieval-augmented generation (Kaito's RAG service and its vector store) is not implemented",
    ),
    "MultiRoleInference": UnservedKind(
        plural="multiroleinferences",
        singular="multiroleinference",
        short_names=("mri",),
        versions=("v1alpha1",),
        storage="v1alpha1",
        why="prefill/decode disaggregated serving is not implemented",
    ),
}


def unserved_message(kind: str) -> str:
    """What `kubectl apply` of a kind kaitopy does not serve yet is told."""
    why = UNSERVED_KINDS[kind].why
    return (
        f"kaitopy does not serve {kind} yet: {why}; nothing was created. "
        "Serve the model with a Workspace (or an InferenceSet) instead"
    )


# Condition types, spelled as Kaito spells them so `kubectl wait --for=condition=...` carries over.
ResourceReady: Final = "ResourceReady"
NodeClaimReady: Final = "NodeClaimReady"
InferenceReady: Final = "InferenceReady"
JobStarted: Final = "JobStarted"
WorkspaceSucceeded: Final = "WorkspaceSucceeded"
WorkspaceDeleting: Final = "WorkspaceDeleting"

CONDITION_TYPES: Final = (
    ResourceReady,
    NodeClaimReady,
    InferenceReady,
    JobStarted,
    WorkspaceSucceeded,
    WorkspaceDeleting,
)

DEFAULT_INSTANCE_TYPE: Final = "Standard_NC24ads_A100_v4"
MAX_ADAPTERS: Final = 10
# resource.count's ceiling: the estimator never plans more nodes, and every node is a NodeClaim.
MAX_NODE_COUNT: Final = 16
# The keys the runtimes read from a user's ConfigMap (Kaito's names).
INFERENCE_CONFIG_KEY: Final = "inference_config.yaml"
TUNING_CONFIG_KEY: Final = "training_config.yaml"
