"""Admission of InferenceSets: the set is judged as the member Workspace it would make, with the
set's author as the requester (their own rights for Secrets and ConfigMaps, not the controller's,
which creates the members), and every field named as the author wrote it (spec.template.…)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from kaitopy.api import Workspace
from kaitopy.api.inferenceset import InferenceSet
from kaitopy.controllers.inferenceset.autoscale import SettingsError, settings_of
from kaitopy.controllers.inferenceset.reconciler import unsupported
from kaitopy.presets import Catalog
from kaitopy.runtime import Client
from kaitopy.webhooks.access import check_access
from kaitopy.webhooks.configs import check_configs
from kaitopy.webhooks.validation import FieldError, pydantic_errors, validate_create

# Where a member Workspace's field comes from in the set.
_SET_PATHS = (
    ("resource.labelSelector", "spec.labelSelector"),
    ("resource", "spec.template.resource"),
    ("inference", "spec.template.inference"),
)


def set_path(field: str) -> str:
    for member, in_set in _SET_PATHS:
        if field == member or field.startswith(member + "."):
            return in_set + field[len(member) :]
    return field


def _renamed(err: FieldError) -> FieldError:
    field = set_path(err.field)
    message = err.message
    if err.field and message.startswith(err.field):
        message = field + message[len(err.field) :]
    return FieldError(field, message)


def member_of(raw: Mapping[str, Any]) -> Workspace:
    """The first member Workspace the set would make (what each member is judged as)."""
    spec = raw.get("spec") or {}
    template = spec.get("template") or {}
    resource: dict[str, Any] = {"labelSelector": spec.get("labelSelector") or {}}
    instance_type = (template.get("resource") or {}).get("instanceType")
    if instance_type:
        resource["instanceType"] = instance_type
    md = raw.get("metadata") or {}
    return Workspace.model_validate(
        {
            "metadata": {"name": f"{md.get('name', '')}-0", "namespace": md.get("namespace", "")},
            "resource": resource,
            "inference": template.get("inference") or {},
        }
    )


async def review_inferenceset(client: Client, catalog: Catalog, req: Mapping[str, Any]) -> list[FieldError]:
    """The errors for one InferenceSet AdmissionRequest (empty: allowed)."""
    raw = req.get("object") or {}
    try:
        InferenceSet.model_validate(raw)
        member = member_of(raw)
    except ValidationError as exc:
        return [_renamed(e) for e in pydantic_errors(exc)]
    if (raw.get("metadata") or {}).get("deletionTimestamp"):
        return []
    errors: list[FieldError] = []
    problem = unsupported(raw.get("spec") or {})
    if problem is not None:
        field = problem.split(":", 1)[0]
        errors.append(FieldError(field, problem))
    try:
        settings_of((raw.get("metadata") or {}).get("annotations"))
    except SettingsError as exc:
        errors.append(FieldError(str(exc).split(":", 1)[0].split(" ", 1)[0], str(exc)))
    namespace = str(req.get("namespace") or member.namespace)
    access = await check_access(client, req.get("userInfo") or {}, namespace, None, member)
    if access:
        return [*errors, *(_renamed(e) for e in access)]
    config_errors, max_model_len = await check_configs(member, namespace, client)
    checked = validate_create(member, catalog, max_model_len=max_model_len)
    return [*errors, *(_renamed(e) for e in [*config_errors, *checked])]
