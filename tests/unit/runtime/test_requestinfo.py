"""request_info: the verb and resource of a request, read from its path as the API server does."""

from __future__ import annotations

import pytest

from kaitopy.runtime.client.requestinfo import request_info

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("method", "path", "watch", "expected"),
    [
        ("GET", "/api/v1/namespaces/ns/events", False, ("list", "events")),
        ("GET", "/api/v1/nodes", True, ("watch", "nodes")),
        ("GET", "/api/v1/nodes/n1", False, ("get", "nodes")),
        ("GET", "/api/v1/namespaces/ns", False, ("get", "namespaces")),
        ("PUT", "/api/v1/namespaces/ns/finalize", False, ("update", "namespaces/finalize")),
        ("POST", "/apis/karpenter.sh/v1/nodeclaims", False, ("create", "nodeclaims.karpenter.sh")),
        (
            "PATCH",
            "/apis/kaito.sh/v1beta1/namespaces/ns/workspaces/w/status",
            False,
            ("patch", "workspaces.kaito.sh/status"),
        ),
        ("DELETE", "/apis/apps/v1/namespaces/ns/deployments/d", False, ("delete", "deployments.apps")),
        ("DELETE", "/api/v1/namespaces/ns/pods", False, ("deletecollection", "pods")),
        ("GET", "/apis/apps/v1", False, ("get", "")),
        ("GET", "/version", False, ("get", "")),
    ],
)
def test_verb_and_resource(method: str, path: str, watch: bool, expected: tuple[str, str]) -> None:
    assert request_info(method, path, watch=watch) == expected
