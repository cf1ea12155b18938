"""What a REST request touches, read from its path as the API server reads it (its RequestInfo):
the Kubernetes verb (get, list, watch, create, update, patch, delete, deletecollection) and the
resource as `plural[.group][/subresource]`. Counting requests by these, not only by HTTP method,
says which read or write a controller added (a GET per reconcile shows up as `get workspaces`)."""

from __future__ import annotations

from urllib.parse import unquote

_WRITE_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}
_NAMESPACE_SUBRESOURCES = {"finalize", "status"}


def request_info(method: str, path: str, *, watch: bool = False) -> tuple[str, str]:
    """(verb, resource) of a request; resource is "" for discovery and other non-resource paths."""
    parts = [unquote(p) for p in path.split("?", 1)[0].strip("/").split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return method.lower(), ""
    # namespaces/<ns>/<resource>... is a namespaced path unless it names the namespace itself
    # (namespaces/<ns>, or its subresources finalize and status, as the API server reads it).
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in _NAMESPACE_SUBRESOURCES:
        rest = rest[2:]
    if not rest:
        return method.lower(), ""
    resource = rest[0] + (f".{group}" if group else "")
    named = len(rest) >= 2
    if len(rest) >= 3:
        resource += "/" + rest[2]
    if method == "GET":
        verb = "watch" if watch else ("get" if named else "list")
    elif method == "DELETE":
        verb = "delete" if named else "deletecollection"
    else:
        verb = _WRITE_VERBS.get(method, method.lower())
    return verb, resource
