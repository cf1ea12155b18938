"""The CRDs the provisioner works with, installed by it when absent.

`nodeclaims.karpenter.sh` (v1) mirrors Karpenter's API — the same fields, validation rules and
printer columns — so `kubectl get nodeclaims` reads the same whichever provisioner made them.
`kaitonodeclasses.kaito.sh` is the node class our NodeClaims reference; a NodeClaim that references
another class belongs to another provisioner and is left alone.
"""

from __future__ import annotations

from typing import Any

from kaitopy.api.nodeclaim import GROUP as NODECLAIM_GROUP

NODECLASS_GROUP = "kaito.sh"
NODECLASS_KIND = "KaitoNodeClass"

_QUALIFIED_NAME = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*(\/))?([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"
_QUANTITY = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"


def _taint_list(description: str) -> dict[str, Any]:
    return {
        "type": "array",
        "description": description,
        "items": {
            "type": "object",
            "required": ["key", "effect"],
            "properties": {
                "key": {
                    "type": "string",
                    "minLength": 1,
                    "pattern": _QUALIFIED_NAME,
                    "description": "Taint key.",
                },
                "value": {"type": "string", "pattern": _QUALIFIED_NAME, "description": "Taint value."},
                "effect": {
                    "type": "string",
                    "enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"],
                    "description": "What the taint does to pods that do not tolerate it.",
                },
                "timeAdded": {
                    "type": "string",
                    "format": "date-time",
                    "description": "Set for NoExecute taints.",
                },
            },
        },
    }


def _domain_rules() -> list[dict[str, str]]:
    # Which label keys a requirement may use: the well-known node labels, and no other key in the
    # kubernetes.io, k8s.io or karpenter.sh domains (those belong to the kubelet and Karpenter).
    well_known = (
        '["beta.kubernetes.io/instance-type", "failure-domain.beta.kubernetes.io/region", '
        '"beta.kubernetes.io/os", "beta.kubernetes.io/arch", "failure-domain.beta.kubernetes.io/zone", '
        '"topology.kubernetes.io/zone", "topology.kubernetes.io/region", "node.kubernetes.io/instance-type", '
        '"kubernetes.io/arch", "kubernetes.io/os", "node.kubernetes.io/windows-build"]'
    )
    domain = 'self.find("^([^/]+)")'
    return [
        {
            "message": 'label domain "kubernetes.io" is restricted',
            "rule": f'self in {well_known} || {domain}.endsWith("node.kubernetes.io") || '
            f'{domain}.endsWith("node-restriction.kubernetes.io") || !{domain}.endsWith("kubernetes.io")',
        },
        {
            "message": 'label domain "k8s.io" is restricted',
            "rule": f'{domain}.endsWith("kops.k8s.io") || !{domain}.endsWith("k8s.io")',
        },
        {
            "message": 'label domain "karpenter.sh" is restricted',
            "rule": f'self in ["karpenter.sh/capacity-type", "karpenter.sh/nodepool"] || !{domain}.endsWith("karpenter.sh")',
        },
        {
            "message": 'label "kubernetes.io/hostname" is restricted',
            "rule": 'self != "kubernetes.io/hostname"',
        },
    ]


def _condition_list() -> dict[str, Any]:
    return {
        "type": "array",
        "description": "Launched, Registered, Initialized and the Ready condition they roll up into.",
        "items": {
            "type": "object",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": {"type": "string", "maxLength": 316},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "reason": {"type": "string", "maxLength": 1024},
                "message": {"type": "string", "maxLength": 32768},
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
            },
        },
        "x-kubernetes-list-map-keys": ["type"],
        "x-kubernetes-list-type": "map",
    }


def _resource_map(description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": _QUANTITY,
            "x-kubernetes-int-or-string": True,
        },
    }


def nodeclaim_crd() -> dict[str, Any]:
    requirement = {
        "type": "object",
        "required": ["key", "operator"],
        "description": "A node selector requirement; minValues asks for at least that many values.",
        "properties": {
            "key": {
                "type": "string",
                "maxLength": 316,
                "pattern": _QUALIFIED_NAME,
                "description": "The label key the requirement applies to.",
                "x-kubernetes-validations": _domain_rules(),
            },
            "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]},
            "values": {
                "type": "array",
                "items": {
                    "type": "string",
                    "maxLength": 63,
                    "pattern": r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$",
                },
                "x-kubernetes-list-type": "atomic",
                "description": "Non-empty for In/NotIn, empty for Exists/DoesNotExist, one integer for Gt/Lt.",
            },
            "minValues": {"type": "integer", "minimum": 1, "maximum": 50},
        },
    }
    spec = {
        "type": "object",
        "description": "The node this claim asks for. Immutable: a different node needs a new claim.",
        "required": ["nodeClassRef", "requirements"],
        "x-kubernetes-validations": [{"message": "spec is immutable", "rule": "self == oldSelf"}],
        "properties": {
            "nodeClassRef": {
                "type": "object",
                "description": "The provider-specific node class; ours is kaito.sh/KaitoNodeClass.",
                "required": ["group", "kind", "name"],
                "properties": {
                    "group": {
                        "type": "string",
                        "pattern": "^[^/]*$",
                        "x-kubernetes-validations": [
                            {"message": "group may not be empty", "rule": "self != ''"}
                        ],
                    },
                    "kind": {
                        "type": "string",
                        "x-kubernetes-validations": [
                            {"message": "kind may not be empty", "rule": "self != ''"}
                        ],
                    },
                    "name": {
                        "type": "string",
                        "x-kubernetes-validations": [
                            {"message": "name may not be empty", "rule": "self != ''"}
                        ],
                    },
                },
            },
            "requirements": {
                "type": "array",
                "maxItems": 100,
                "description": "Label requirements the node must satisfy, e.g. node.kubernetes.io/instance-type In [...].",
                "items": requirement,
                "x-kubernetes-validations": [
                    {
                        "message": "requirements with operator 'In' must have a value defined",
                        "rule": "self.all(x, x.operator == 'In' ? x.values.size() != 0 : true)",
                    },
                    {
                        "message": "requirements operator 'Gt' or 'Lt' must have a single positive integer value",
                        "rule": "self.all(x, (x.operator == 'Gt' || x.operator == 'Lt') ? "
                        "(x.values.size() == 1 && int(x.values[0]) >= 0) : true)",
                    },
                    {
                        "message": "requirements with 'minValues' must have at least that many values specified in the 'values' field",
                        "rule": "self.all(x, (x.operator == 'In' && has(x.minValues)) ? x.values.size() >= x.minValues : true)",
                    },
                ],
            },
            "resources": {
                "type": "object",
                "properties": {"requests": _resource_map("Resources the node must offer, e.g. storage.")},
            },
            "taints": _taint_list("Taints put on the node for its whole life."),
            "startupTaints": _taint_list(
                "Taints put on the node at start, expected to be removed by a daemon."
            ),
            "expireAfter": {"type": "string", "default": "720h", "pattern": r"^(([0-9]+(s|m|h))+)|(Never)$"},
            "terminationGracePeriod": {"type": "string", "pattern": r"^([0-9]+(s|m|h))+$"},
        },
    }
    status = {
        "type": "object",
        "properties": {
            "providerID": {"type": "string", "description": "The cloud's ID of the instance."},
            "nodeName": {"type": "string", "description": "The Node that registered for this claim."},
            "imageID": {"type": "string"},
            "capacity": _resource_map("The node's capacity."),
            "allocatable": _resource_map("The node's allocatable resources."),
            "conditions": _condition_list(),
            "lastPodEventTime": {"type": "string", "format": "date-time"},
        },
    }
    columns = [
        ("Type", r".metadata.labels.node\.kubernetes\.io/instance-type", "string", 0),
        ("Capacity", r".metadata.labels.karpenter\.sh/capacity-type", "string", 0),
        ("Zone", r".metadata.labels.topology\.kubernetes\.io/zone", "string", 0),
        ("Node", ".status.nodeName", "string", 0),
        ("Ready", '.status.conditions[?(@.type=="Ready")].status', "string", 0),
        ("Age", ".metadata.creationTimestamp", "date", 0),
        ("ID", ".status.providerID", "string", 1),
        ("NodePool", r".metadata.labels.karpenter\.sh/nodepool", "string", 1),
        ("NodeClass", ".spec.nodeClassRef.name", "string", 1),
    ]
    return _crd(
        group=NODECLAIM_GROUP,
        kind="NodeClaim",
        plural="nodeclaims",
        categories=["karpenter"],
        description="A request for one node, fulfilled by a provisioner.",
        spec=spec,
        status=status,
        columns=columns,
    )


def nodeclass_crd() -> dict[str, Any]:
    spec = {
        "type": "object",
        "description": "Provider settings shared by the NodeClaims that reference this class.",
        "properties": {
            "osSKU": {
                "type": "string",
                "description": "Node OS image (azure: Ubuntu or AzureLinux). A claim's kaito.sh/os-sku annotation wins.",
            },
        },
    }
    status = {"type": "object", "properties": {"conditions": _condition_list()}}
    return _crd(
        group=NODECLASS_GROUP,
        kind=NODECLASS_KIND,
        plural="kaitonodeclasses",
        categories=["kaito"],
        description="Provider settings for the GPU nodes kaitopy's provisioner launches.",
        spec=spec,
        status=status,
        columns=[("Age", ".metadata.creationTimestamp", "date", 0)],
    )


def _crd(
    *,
    group: str,
    kind: str,
    plural: str,
    categories: list[str],
    description: str,
    spec: dict[str, Any],
    status: dict[str, Any],
    columns: list[tuple[str, str, str, int]],
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "categories": categories,
            },
            "scope": "Cluster",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": n, "jsonPath": p, "type": t, **({"priority": pr} if pr else {})}
                        for n, p, t, pr in columns
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }
