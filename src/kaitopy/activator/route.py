"""Which InferenceSet a request is for (pure).

Two ways in: a per-set Service `<set>` in the set's namespace of type ExternalName pointing at the
activator's Service (the client calls `http://<set>.<namespace>.svc...`, and the Host header names
the set), or an explicit path prefix `/inferencesets/<namespace>/<set>/` on the activator's Service.
"""

from __future__ import annotations

from dataclasses import dataclass

PATH_PREFIX = "/inferencesets/"


@dataclass(frozen=True)
class Route:
    namespace: str
    name: str
    path: str
    """The path (and query) to send to the member."""


def route(host: str, path_qs: str) -> Route | None:
    """The set from the path prefix, else from the Host header (`<set>.<namespace>` or
    `<set>.<namespace>.svc[.<cluster domain>]`); None when neither names one."""
    if path_qs.startswith(PATH_PREFIX):
        parts = path_qs[len(PATH_PREFIX) :].split("/", 2)
        if len(parts) >= 2 and parts[0] and parts[1] and "?" not in parts[0] + parts[1]:
            rest = "/" + parts[2] if len(parts) == 3 else "/"
            return Route(parts[0], parts[1], rest)
        return None
    name_part = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    labels = name_part.rstrip(".").split(".")
    if (len(labels) == 2 or (len(labels) >= 3 and labels[2] == "svc")) and all(labels[:2]):
        return Route(labels[1], labels[0], path_qs or "/")
    return None
