"""Exceptions of the runtime layer: API errors mapped from HTTP status, plus the reconcile outcomes.

Every API error carries the request (method, path) and the server's Status (reason, message, causes)
so a log line says what failed and why without a second lookup.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FieldCause:
    """One field-level cause from a Status' details (e.g. why an object is Invalid)."""

    field: str
    reason: str
    message: str


class RuntimeLibraryError(Exception):
    """Base of every error the runtime raises."""


class ApiError(RuntimeLibraryError):
    """The API server answered with a non-2xx status."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        method: str = "",
        path: str = "",
        causes: tuple[FieldCause, ...] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.method = method
        self.path = path
        self.causes = causes
        self.retry_after = retry_after


class BadRequest(ApiError):
    """400: the request was malformed (bad selector, unsupported parameter...)."""


class Unauthorized(ApiError):
    """401: credentials missing or rejected."""


class Forbidden(ApiError):
    """403: RBAC denies the request (or the namespace is terminating)."""


class NotFound(ApiError):
    """404: the object (or the resource type) does not exist."""


class Conflict(ApiError):
    """409: optimistic concurrency failure (stale resourceVersion) or an apply conflict."""


class AlreadyExists(Conflict):
    """409 with reason AlreadyExists: create of a name that is taken."""


class Gone(ApiError):
    """410: the resourceVersion is too old (etcd compacted it); re-list."""


class Invalid(ApiError):
    """422: validation failed; `causes` says which fields and why."""


class TooManyRequests(ApiError):
    """429: API priority and fairness throttled us; `retry_after` is the server's hint."""


class ServerError(ApiError):
    """5xx: the server failed; usually transient."""


class TransportError(RuntimeLibraryError):
    """The request never got an HTTP answer (connection refused, reset, timeout)."""


class TerminalError(RuntimeLibraryError):
    """Raised by a reconcile to say: retrying will not help, do not requeue.

    The controller logs it, counts it as an error and forgets the request until the object changes.
    """


class LeadershipLost(RuntimeLibraryError):
    """The leader-election lease could not be renewed in time; the process must stop reconciling."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: Invalid,
    429: TooManyRequests,
}


def api_error(
    status: int, body: bytes, *, method: str = "", path: str = "", retry_after: str | None = None
) -> ApiError:
    """Build the exception matching an HTTP error answer whose body is (usually) a metav1.Status."""
    reason, message = "", body.decode("utf-8", "replace")[:500]
    causes: tuple[FieldCause, ...] = ()
    try:
        doc: Any = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        reason = str(doc.get("reason") or "")
        message = str(doc.get("message") or message)
        details = doc.get("details") or {}
        causes = tuple(
            FieldCause(str(c.get("field", "")), str(c.get("reason", "")), str(c.get("message", "")))
            for c in details.get("causes") or ()
        )
        if status == 200 or not status:  # a Status inside a watch stream carries its own code
            status = int(doc.get("code") or 0)
    cls: type[ApiError] = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    if cls is Conflict and reason == "AlreadyExists":
        cls = AlreadyExists
    after: float | None = None
    if retry_after:
        try:
            after = float(retry_after)
        except ValueError:
            after = None
    return cls(status, reason, message, method=method, path=path, causes=causes, retry_after=after)
