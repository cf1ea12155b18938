"""Status conditions (metav1.Condition): pure functions, the caller supplies the time.

lastTransitionTime changes only when a condition's status flips, so it tells when the state changed,
not when the controller last looked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]


def rfc3339(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find_condition(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for c in conditions or ():
        if c.get("type") == type_:
            return c
    return None


def is_true(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> bool:
    c = find_condition(conditions, type_)
    return c is not None and c.get("status") == "True"


def set_condition(
    conditions: Iterable[Mapping[str, Any]] | None,
    type_: str,
    status: Status,
    *,
    reason: str,
    message: str = "",
    observed_generation: int | None = None,
    now: datetime,
) -> list[dict[str, Any]]:
    """A new condition list with `type_` set; order kept, new types appended.

    Returns equal data when nothing changed (so a status write can be skipped).
    """
    result: list[dict[str, Any]] = []
    found = False
    for c in conditions or ():
        c = dict(c)
        if c.get("type") == type_:
            found = True
            if c.get("status") != status:
                c["lastTransitionTime"] = rfc3339(now)
            c.update(status=status, reason=reason, message=message)
            if observed_generation is not None:
                c["observedGeneration"] = observed_generation
        result.append(c)
    if not found:
        new: dict[str, Any] = {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": rfc3339(now),
        }
        if observed_generation is not None:
            new["observedGeneration"] = observed_generation
        result.append(new)
    return result


def remove_condition(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> list[dict[str, Any]]:
    return [dict(c) for c in conditions or () if c.get("type") != type_]
