"""The author-rights check: which references need which right, the SubjectAccessReview asked, and
the refusal (table-driven; no API server: a stub answers the reviews)."""

from __future__ import annotations

from typing import Any

import pytest

from kaitopy.api import Workspace
from kaitopy.runtime import Kind
from kaitopy.webhooks.access import (
    SUBJECT_ACCESS_REVIEW,
    Need,
    changed_needs,
    check_access,
    decide,
    needs,
    review_body,
)

USER = {"username": "alice", "uid": "u-1", "groups": ["devs", "system:authenticated"], "extra": {"x": ["y"]}}


def ws(**spec: Any) -> Workspace:
    doc: dict[str, Any] = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": "w", "namespace": "team-a"},
        "resource": {"instanceType": "Standard_NC6s_v3", "labelSelector": {"matchLabels": {"a": "b"}}},
    }
    doc.update(spec)
    return Workspace.model_validate(doc)


TEMPLATE = {"spec": {"containers": [{"name": "m", "image": "x"}]}}
OPTIONS = {"imagePullSecrets": ["pull"], "modelAccessSecret": "hf"}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"inference": {"preset": {"name": "phi-3-mini-4k-instruct"}}}, []),
        ({"inference": {"template": TEMPLATE}}, [("inference.template", "create", "pods", "")]),
        (
            {"inference": {"preset": {"name": "p", "presetOptions": OPTIONS}, "config": "cfg"}},
            [
                ("inference.preset.presetOptions.imagePullSecrets[0]", "get", "secrets", "pull"),
                ("inference.preset.presetOptions.modelAccessSecret", "get", "secrets", "hf"),
                ("inference.config", "get", "configmaps", "cfg"),
            ],
        ),
        (
            {
                "inference": {
                    "preset": {"name": "p"},
                    "adapters": [
                        {"source": {"name": "a", "image": "i", "imagePullSecrets": ["s1"]}},
                        {"source": {"name": "b", "volumeSource": {"hostPath": {"path": "/"}}}},
                    ],
                }
            },
            [
                ("inference.adapters[0].source.imagePullSecrets[0]", "get", "secrets", "s1"),
                ("inference.adapters[1].source.volumeSource", "create", "pods", ""),
            ],
        ),
        (
            {
                "tuning": {
                    "preset": {"name": "p", "presetOptions": {"modelAccessSecret": "hf"}},
                    "config": "tc",
                    "input": {"image": "i", "imagePullSecrets": ["in"]},
                    "output": {"image": "o", "imagePushSecret": "push"},
                }
            },
            [
                ("tuning.preset.presetOptions.modelAccessSecret", "get", "secrets", "hf"),
                ("tuning.config", "get", "configmaps", "tc"),
                ("tuning.input.imagePullSecrets[0]", "get", "secrets", "in"),
                ("tuning.output.imagePushSecret", "get", "secrets", "push"),
            ],
        ),
        (
            {"tuning": {"preset": {"name": "p"}, "output": {"volumeSource": {"hostPath": {"path": "/"}}}}},
            [("tuning.output.volumeSource", "create", "pods", "")],
        ),
    ],
)
def test_needs(spec: dict[str, Any], expected: list[tuple[str, str, str, str]]) -> None:
    assert [(n.field, n.verb, n.resource, n.name) for n in needs(ws(**spec))] == expected


def test_update_checks_only_new_or_changed_references() -> None:
    old = ws(inference={"template": TEMPLATE, "config": "cfg"})
    assert changed_needs(old, old) == []
    assert changed_needs(None, old) == needs(old)
    other = {"spec": {"hostNetwork": True, "containers": [{"name": "m", "image": "x"}]}}
    new = ws(inference={"template": other, "config": "cfg2"})
    assert [(n.field, n.name) for n in changed_needs(old, new)] == [
        ("inference.template", ""),
        ("inference.config", "cfg2"),
    ]


@pytest.mark.parametrize(
    ("need", "attributes"),
    [
        (
            Need("inference.template", "create", "pods"),
            {"namespace": "team-a", "verb": "create", "resource": "pods"},
        ),
        (
            Need("tuning.output.imagePushSecret", "get", "secrets", "push"),
            {"namespace": "team-a", "verb": "get", "resource": "secrets", "name": "push"},
        ),
    ],
)
def test_review_body_asks_about_the_requesting_user(need: Need, attributes: dict[str, str]) -> None:
    body = review_body(USER, "team-a", need)
    assert body["apiVersion"] == "authorization.k8s.io/v1" and body["kind"] == "SubjectAccessReview"
    assert body["spec"] == {
        "user": "alice",
        "uid": "u-1",
        "groups": ["devs", "system:authenticated"],
        "extra": {"x": ["y"]},
        "resourceAttributes": attributes,
    }


TEMPLATE_NEED = Need(
    "inference.template",
    "create",
    "pods",
    why="a template runs a pod of your own design, so it needs that right (ask for it, or use a preset)",
)
SECRET_NEED = needs(
    ws(tuning={"preset": {"name": "p"}, "output": {"image": "o", "imagePushSecret": "push"}})
)[0]


@pytest.mark.parametrize(
    ("need", "status", "message"),
    [
        (TEMPLATE_NEED, {"allowed": True}, None),
        (
            TEMPLATE_NEED,
            {"allowed": False},
            "inference.template: user alice may not create pods in namespace team-a; a template runs a pod "
            "of your own design, so it needs that right (ask for it, or use a preset)",
        ),
        (
            TEMPLATE_NEED,
            {"allowed": True, "denied": True},
            "inference.template: user alice may not create pods in namespace team-a; a template runs a pod "
            "of your own design, so it needs that right (ask for it, or use a preset)",
        ),
        (
            SECRET_NEED,
            None,
            "tuning.output.imagePushSecret: user alice may not get secrets 'push' in namespace team-a; the "
            "workload reads that Secret, so it needs that right (ask for it, or name one you may read)",
        ),
    ],
)
def test_decide(need: Need, status: dict[str, Any] | None, message: str | None) -> None:
    error = decide(need, "alice", "team-a", status)
    assert (None if error is None else str(error)) == message


class Reviews:
    """Answers SubjectAccessReviews from a set of (verb, resource, name) allowed; or fails."""

    def __init__(self, allowed: set[tuple[str, str, str]], fail: Exception | None = None):
        self.allowed, self.fail, self.asked = allowed, fail, []

    async def create(self, kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
        assert kind == SUBJECT_ACCESS_REVIEW
        if self.fail is not None:
            raise self.fail
        a = obj["spec"]["resourceAttributes"]
        key = (a["verb"], a["resource"], a.get("name", ""))
        self.asked.append(key)
        return {"status": {"allowed": key in self.allowed}}


TEMPLATED = ws(inference={"template": TEMPLATE})


@pytest.mark.parametrize(
    ("allowed", "fail", "fields"),
    [
        ({("create", "pods", "")}, None, []),
        (set(), None, ["inference.template"]),
        ({("create", "pods", "")}, RuntimeError("connection refused"), ["inference.template"]),
    ],
)
async def test_check_access(
    allowed: set[tuple[str, str, str]], fail: Exception | None, fields: list[str]
) -> None:
    client = Reviews(allowed, fail)
    errors = await check_access(client, USER, "team-a", None, TEMPLATED)  # type: ignore[arg-type]
    assert [e.field for e in errors] == fields
    if fail is not None:
        assert "could not check" in str(errors[0]) and "SubjectAccessReview failed" in str(errors[0])
        assert "connection refused" in str(errors[0])
