"""The reconcile contract: `async def reconcile(request) -> Result | None`."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, order=True)
class Request:
    """Which object to reconcile. Hashable: it is the work queue's item."""

    namespace: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class Result:
    """What to do after a successful reconcile.

    `requeue_after`: reconcile again after this many seconds (e.g. to poll something external).
    `requeue`: reconcile again soon, through the rate limiter (backing off).
    Neither: done until the object (or something it watches) changes, or the periodic resync.
    """

    requeue_after: float | None = None
    requeue: bool = False


Reconciler = Callable[[Request], Awaitable[Result | None]]


@dataclass(frozen=True)
class ReconcileContext:
    controller: str
    request: Request
    reconcile_id: str


_current: contextvars.ContextVar[ReconcileContext | None] = contextvars.ContextVar("reconcile", default=None)


def current_reconcile() -> ReconcileContext | None:
    """The reconcile running in this task, if any."""
    return _current.get()


class _ReconcileLogAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        ctx = _current.get()
        if ctx is not None:
            extra = dict(kwargs.get("extra") or {})
            extra.setdefault("controller", ctx.controller)
            extra.setdefault("object", ctx.request.key)
            extra.setdefault("reconcile_id", ctx.reconcile_id)
            kwargs["extra"] = extra
        return msg, kwargs


def reconcile_logger(name: str) -> logging.LoggerAdapter:  # type: ignore[type-arg]
    """A logger that adds controller=, object=ns/name and reconcile_id= of the running reconcile."""
    return _ReconcileLogAdapter(logging.getLogger(name), {})
