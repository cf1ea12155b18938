"""The tuning pods' egress NetworkPolicy: a second fence behind the downloader's address guard.

The fetch step downloads user-given URLs; if its guard were ever bypassed, the network itself must
still refuse the node's metadata endpoints (169.254.169.254, Azure's WireServer 168.63.129.16) and
the cluster's private ranges. The policy selects the tuning Workspace's pods and allows:
  - any public address (data URLs, Hugging Face, public registries), minus the forbidden ranges;
  - DNS to the cluster's kube-dns pods (a URL's host name must resolve; kube-dns's Service
    address is private, so without this rule no name would);
  - the registries the Job pulls from or pushes to, when they are named by a literal private
    address, and the private networks the admin allowed input URLs to reach (`extra_cidrs`).
The API server is not needed: the Job's containers never call it.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

from kaitopy.controllers.workspace.plan import WORKSPACE_LABEL, TuningPlan

# What a tuning pod may never reach. 169.254.0.0/16 covers the metadata endpoint; 168.63.129.16
# is public address space, so it must be named.
DENIED_V4 = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "168.63.129.16/32",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
)
# ::ffff:0:0/96 (IPv4-mapped) is not listed: the API server reads it as IPv4 and refuses it inside
# ::/0, and a mapped address leaves the node as IPv4, where the IPv4 rule applies.
DENIED_V6 = ("::1/128", "64:ff9b::/96", "2002::/16", "fc00::/7", "fe80::/10", "ff00::/8")


def registry_cidrs(plan: TuningPlan) -> tuple[str, ...]:
    """The registries the Job's own steps talk to (the push target, and the weights artifact's
    registry for presets whose weights come from OCI), when named by a literal address (a
    cluster-local registry such as 10.229.254.1:5001), plus the private networks the admin lets
    input URLs reach (--url-allow-network). A registry named by a host name that resolves to a
    private address is not covered (see docs/security.md)."""
    out: list[str] = []
    for image in (plan.output_image, plan.weights_image):
        if not image:
            continue
        host = image.split("/", 1)[0]
        host = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
        try:
            address = ip_address(host)
        except ValueError:
            continue
        out.append(f"{address}/{address.max_prefixlen}")
    out += plan.allowed_networks
    return tuple(dict.fromkeys(out))


def tuning_egress_policy(plan: TuningPlan, extra_cidrs: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The NetworkPolicy for `plan`'s Job pods, named after the Job. `extra_cidrs` defaults to
    `registry_cidrs(plan)`."""
    if extra_cidrs is None:
        extra_cidrs = registry_cidrs(plan)
    egress: list[dict[str, Any]] = [
        {
            "to": [
                {"ipBlock": {"cidr": "0.0.0.0/0", "except": list(DENIED_V4)}},
                {"ipBlock": {"cidr": "::/0", "except": list(DENIED_V6)}},
            ]
        },
        {
            "to": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                }
            ],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        },
    ]
    if extra_cidrs:
        egress.append({"to": [{"ipBlock": {"cidr": c}} for c in extra_cidrs]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": plan.name, "namespace": plan.namespace, "labels": {WORKSPACE_LABEL: plan.name}},
        "spec": {
            "podSelector": {"matchLabels": {WORKSPACE_LABEL: plan.name}},
            "policyTypes": ["Egress"],
            "egress": egress,
        },
    }
