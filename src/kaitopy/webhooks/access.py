"""The requesting user's own rights, checked with SubjectAccessReviews.

A Workspace makes the controller (with its own, broad rights) create pods and Jobs that mount the
Secrets and ConfigMaps the Workspace names. Without this check anyone who may create a Workspace
could run a pod of their own design (inference.template) or read any Secret of the namespace (a
pull, push or access secret) through us. So each such reference needs the author to hold the right
themselves: `create pods` for a template or a volumeSource, `get` on each named Secret/ConfigMap.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kaitopy.api import Workspace
from kaitopy.api.workspace import DataSource, PresetSpec
from kaitopy.runtime import Client, Kind
from kaitopy.webhooks.validation import FieldError

SUBJECT_ACCESS_REVIEW = Kind(
    "authorization.k8s.io", "v1", "SubjectAccessReview", "subjectaccessreviews", namespaced=False
)

_POD_REASON = "runs a pod of your own design, so it needs that right"


@dataclass(frozen=True)
class Need:
    """One right the author must hold: `verb` on `resource` (named `name`, or any) for `field`.
    `value` is what the field holds, so an update re-checks only references that changed."""

    field: str
    verb: str
    resource: str
    name: str = ""
    why: str = ""
    value: str = ""


def needs(ws: Workspace) -> list[Need]:
    """The rights a Workspace borrows from the controller, one per reference."""
    return list(_needs(ws))


def _needs(ws: Workspace) -> Iterator[Need]:
    inf, tun = ws.inference, ws.tuning
    if inf is not None:
        if inf.template is not None:
            yield Need(
                "inference.template",
                "create",
                "pods",
                why=f"a template {_POD_REASON} (ask for it, or use a preset)",
                value=_dump(inf.template),
            )
        yield from _preset("inference.preset", inf.preset)
        if inf.config:
            yield _named("inference.config", "configmaps", inf.config)
        for i, adapter in enumerate(inf.adapters or ()):
            yield from _source(f"inference.adapters[{i}].source", adapter.source)
    if tun is not None:
        yield from _preset("tuning.preset", tun.preset)
        if tun.config:
            yield _named("tuning.config", "configmaps", tun.config)
        yield from _source("tuning.input", tun.input)
        if tun.output is not None:
            if tun.output.volume_source is not None:
                yield _volume("tuning.output.volumeSource", tun.output.volume_source)
            if tun.output.image_push_secret:
                yield _named("tuning.output.imagePushSecret", "secrets", tun.output.image_push_secret)


def _preset(field: str, preset: PresetSpec | None) -> Iterator[Need]:
    options = preset.preset_options if preset is not None else None
    if options is None:
        return
    for i, name in enumerate(options.image_pull_secrets or ()):
        yield _named(f"{field}.presetOptions.imagePullSecrets[{i}]", "secrets", name)
    if options.model_access_secret:
        yield _named(f"{field}.presetOptions.modelAccessSecret", "secrets", options.model_access_secret)


def _source(field: str, source: DataSource | None) -> Iterator[Need]:
    if source is None:
        return
    if source.volume_source is not None:
        yield _volume(f"{field}.volumeSource", source.volume_source)
    for i, name in enumerate(source.image_pull_secrets or ()):
        yield _named(f"{field}.imagePullSecrets[{i}]", "secrets", name)


def _named(field: str, resource: str, name: str) -> Need:
    kind = "Secret" if resource == "secrets" else "ConfigMap"
    why = f"the workload reads that {kind}, so it needs that right (ask for it, or name one you may read)"
    return Need(field, "get", resource, name, why=why, value=name)


def _volume(field: str, volume: Mapping[str, Any]) -> Need:
    # Any volume type (hostPath, a secret, a PVC) is mounted as given: the same power as a pod.
    why = f"a volumeSource {_POD_REASON} (ask for it, or use urls or an image)"
    return Need(field, "create", "pods", why=why, value=_dump(volume))


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def changed_needs(old: Workspace | None, new: Workspace) -> list[Need]:
    """The needs to check: all of a new Workspace's; on update, those whose reference is new or
    changed (an unchanged template was checked when its author wrote it)."""
    current = needs(new)
    if old is None:
        return current
    before = set(needs(old))
    return [n for n in current if n not in before]


def review_body(user_info: Mapping[str, Any], namespace: str, need: Need) -> dict[str, Any]:
    """The SubjectAccessReview asking whether the AdmissionRequest's user may do `need`."""
    attributes: dict[str, Any] = {"namespace": namespace, "verb": need.verb, "resource": need.resource}
    if need.name:
        attributes["name"] = need.name
    spec: dict[str, Any] = {
        "user": str(user_info.get("username") or ""),
        "groups": list(user_info.get("groups") or ()),
        "resourceAttributes": attributes,
    }
    if user_info.get("uid"):
        spec["uid"] = str(user_info["uid"])
    if user_info.get("extra"):
        spec["extra"] = {k: list(v) for k, v in dict(user_info["extra"]).items()}
    return {"apiVersion": SUBJECT_ACCESS_REVIEW.api_version, "kind": SUBJECT_ACCESS_REVIEW.kind, "spec": spec}


def decide(need: Need, user: str, namespace: str, status: Mapping[str, Any] | None) -> FieldError | None:
    """None when the review allowed `need`; otherwise the refusal naming the field, the missing
    right and the fix."""
    if status and status.get("allowed") is True and not status.get("denied"):
        return None
    target = f"{need.resource} {need.name!r}" if need.name else need.resource
    return FieldError(
        need.field,
        f"{need.field}: user {user or '(anonymous)'} may not {need.verb} {target} in namespace "
        f"{namespace}; {need.why}",
    )


def unchecked(need: Need, user: str, namespace: str, exc: Exception) -> FieldError:
    """The refusal when the review itself failed: never admit what could not be checked."""
    return FieldError(
        need.field,
        f"{need.field}: could not check that user {user or '(anonymous)'} may {need.verb} {need.resource} "
        f"in namespace {namespace} (SubjectAccessReview failed: {exc}); the workspace is refused "
        "until the check succeeds, try again",
    )


async def check_access(
    client: Client, user_info: Mapping[str, Any], namespace: str, old: Workspace | None, new: Workspace
) -> list[FieldError]:
    """A refusal per reference the requesting user could not make themselves. The reviews run
    concurrently: up to ten adapters with their secrets must fit the webhook's timeout."""
    user = str(user_info.get("username") or "")

    async def one(need: Need) -> FieldError | None:
        try:
            result = await client.create(SUBJECT_ACCESS_REVIEW, review_body(user_info, namespace, need))
        except Exception as exc:  # fail closed on anything, not only API errors
            return unchecked(need, user, namespace, exc)
        return decide(need, user, namespace, result.get("status"))

    results = await asyncio.gather(*(one(n) for n in changed_needs(old, new)))
    return [e for e in results if e is not None]
