"""The InferenceSet object (kaito.sh/v1beta1) as pydantic models.

Kaito's layout: unlike the Workspace, an InferenceSet has a `spec` (a member template, `replicas`,
`nodeCountLimit`, `labelSelector`, `updateStrategy`) and a `status` (`replicas`, `readyReplicas`,
`selector`, `conditions`). The CRD serves the scale subresource on `.spec.replicas` /
`.status.replicas` / `.status.selector`, so `kubectl scale` and a HorizontalPodAutoscaler drive it.
"""

from __future__ import annotations

from pydantic import Field

from kaitopy.api import messages
from kaitopy.api.constants import GROUP, INFERENCESET_KIND, STORAGE_VERSION
from kaitopy.api.workspace import (
    NAME_MAX,
    SCHEMALESS,
    ApiModel,
    Condition,
    InferenceSpec,
    LabelSelector,
    Schemaless,
    cel,
)


class InferenceSetResourceSpec(ApiModel):
    """The GPU nodes of each member Workspace."""

    instance_type: str | None = Field(default=None, max_length=NAME_MAX)
    """The GPU instance type each member's nodes are provisioned with; empty takes the Workspace
    default."""
    partition: Schemaless | None = Field(default=None, json_schema_extra=SCHEMALESS)
    """Kaito's GPU partitioning, passed to each member Workspace (which kaitopy refuses for now)."""


class InferenceSetTemplate(ApiModel):
    """What each member Workspace is made from."""

    metadata: Schemaless | None = Field(default=None, json_schema_extra=SCHEMALESS)
    """Labels and annotations copied onto each member Workspace."""
    resource: InferenceSetResourceSpec = Field(default_factory=InferenceSetResourceSpec)
    """The GPU nodes of each member."""
    inference: InferenceSpec
    """The model each member serves: a preset (with adapters) or a pod template."""
    cache: Schemaless | None = Field(default=None, json_schema_extra=SCHEMALESS)
    """Kaito's distributed cache settings. Accepted and not used by kaitopy."""


class InferenceSetSpec(ApiModel):
    """The desired state of an InferenceSet."""

    template: InferenceSetTemplate
    """The template of every member Workspace."""
    replicas: int | None = Field(default=1, ge=0)
    """How many member Workspaces to run (the scale subresource writes it). Default 1."""
    node_count_limit: int | None = Field(default=None, ge=0)
    """The most GPU nodes all members together may use; members that would exceed it are not
    created (condition NodeCountLimitReached). Unset or 0: no limit."""
    label_selector: LabelSelector = Field(
        json_schema_extra={
            "x-kubernetes-validations": [cel("self == oldSelf", messages.IMMUTABLE_SET_SELECTOR)]
        }
    )
    """The labels each member uses as its resource.labelSelector (its nodes carry them). Immutable."""
    update_strategy: Schemaless | None = Field(default=None, json_schema_extra=SCHEMALESS)
    """How members are replaced after a template change (appsv1.StatefulSetUpdateStrategy):
    RollingUpdate (the default) with rollingUpdate.maxUnavailable (default 1), or OnDelete."""
    auto_upgrade: Schemaless | None = Field(default=None, json_schema_extra=SCHEMALESS)
    """Kaito's automatic base-image upgrade policy. Accepted and not used by kaitopy."""


class InferenceSetStatus(ApiModel):
    """The observed state of an InferenceSet."""

    replicas: int | None = None
    """Members that exist and are not being deleted."""
    ready_replicas: int | None = None
    """Members whose InferenceReady condition is True."""
    selector: str | None = None
    """A label selector (string form) of the members' model pods, for the scale subresource."""
    conditions: list[Condition] | None = Field(
        default=None,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """InferenceSetReady, plus NodeCountLimitReached while the node limit holds members back."""
    performance: Schemaless | None = Field(default=None, json_schema_extra=SCHEMALESS)
    """Kaito's aggregated performance figures. Not written by kaitopy."""
    auto_upgrade: Schemaless | None = Field(default=None, json_schema_extra=SCHEMALESS)
    """Kaito's auto-upgrade status. Not written by kaitopy."""


class InferenceSet(ApiModel):
    """A set of identical inference Workspaces, scaled as one."""

    api_version: str = f"{GROUP}/{STORAGE_VERSION}"
    """The versioned schema of this object."""
    kind: str = INFERENCESET_KIND
    """InferenceSet."""
    metadata: Schemaless = Field(default_factory=dict)
    """Standard object metadata."""
    spec: InferenceSetSpec
    """The desired state."""
    status: InferenceSetStatus | None = None
    """The observed state, written by the controller."""

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", ""))
