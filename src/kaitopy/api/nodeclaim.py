"""What kaitopy knows of Karpenter's NodeClaim API, in one place for the Workspace controller
(which creates claims and reads their conditions) and the provisioner (which drives them): the
kind, the labels and annotations both sides read, and the condition types, spelled as Karpenter
spells them."""

from __future__ import annotations

from typing import Final

from kaitopy.runtime.kinds import Kind

GROUP: Final = "karpenter.sh"
VERSION: Final = "v1"
NODECLAIM: Final = Kind(GROUP, VERSION, "NodeClaim", "nodeclaims", namespaced=False)

NODECLAIM_LABEL: Final = "kaito.sh/nodeclaim"
"""On a node (and its cloud instance): the claim it was launched for."""
INSTANCE_TYPE_LABEL: Final = "node.kubernetes.io/instance-type"
CAPACITY_TYPE_LABEL: Final = "karpenter.sh/capacity-type"
REGISTERED_LABEL: Final = "karpenter.sh/registered"
INITIALIZED_LABEL: Final = "karpenter.sh/initialized"
TERMINATION_FINALIZER: Final = "karpenter.sh/termination"

# Condition types of a NodeClaim: Ready is the root, True once the other three are.
LAUNCHED: Final = "Launched"
REGISTERED: Final = "Registered"
INITIALIZED: Final = "Initialized"
READY: Final = "Ready"

# Ready's reason on a claim whose instance the provisioner found gone or failed (node loss,
# kaitopy.provisioner.liveness); the workspace controller shows it as NodeLost.
INSTANCE_LOST: Final = "InstanceLost"
# Ready's reason on a claim whose node stayed NotReady past the repair toleration while its
# instance still ran (a dead kubelet on a live VM, a partition): the provisioner replaces it too.
NODE_UNHEALTHY: Final = "NodeUnhealthy"
REPAIRED_REASONS: Final = frozenset({INSTANCE_LOST, NODE_UNHEALTHY})
"""Ready reasons that mean the provisioner gave the node up: its owner sees NodeLost, and
termination skips the drain (no kubelet there stops the pods)."""
