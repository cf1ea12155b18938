"""The Service in front of a set that scales to zero: `<set>` in the set's namespace, of type
ExternalName, pointing at the activator's Service, so clients call `http://<set>.<namespace>.svc/...`
and reach the activator, which routes by that Host (activator/route.py). Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from kaitopy.controllers.inferenceset.members import SET_LABEL
from kaitopy.runtime import owner_reference

FRONT_LABEL = "kaitopy.io/activator-front"
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def activator_host(operator_namespace: str, cluster_domain: str) -> str:
    """The activator Service's full name (an ExternalName is resolved as written: no search path)."""
    return f"kaitopy-activator.{operator_namespace}.svc.{cluster_domain}"


def front_problem(set_name: str) -> str | None:
    """Why the set cannot have a front Service of its own name, or None."""
    if DNS_1035.match(set_name):
        return None
    return (
        f"metadata.name: {set_name!r} cannot name a Service (a DNS label: lowercase letters, digits "
        "and '-', starting with a letter, at most 63); call the activator at "
        "/inferencesets/<namespace>/<set>/ instead, or rename the set"
    )


def desired_front(set_obj: Mapping[str, Any], host: str) -> dict[str, Any]:
    md = set_obj["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": md["name"],
            "namespace": md["namespace"],
            "labels": {SET_LABEL: md["name"], FRONT_LABEL: "true"},
            "ownerReferences": [owner_reference(set_obj)],
        },
        "spec": {"type": "ExternalName", "externalName": host},
    }


def is_current(service: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    spec = service.get("spec") or {}
    return spec.get("type") == "ExternalName" and spec.get("externalName") == desired["spec"]["externalName"]
