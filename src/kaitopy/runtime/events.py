"""An event recorder writing events.k8s.io/v1 Events, folding repeats into one Event's series.

Recording never raises: events are best-effort, a failure is logged and the reconcile goes on.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from kaitopy.runtime.client import Client
from kaitopy.runtime.errors import NotFound, RuntimeLibraryError
from kaitopy.runtime.kinds import EVENT
from kaitopy.runtime.objects import Obj, meta, name_of, namespace_of

log = logging.getLogger(__name__)

EventKind = Literal["Normal", "Warning"]


def _micro(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class _Seen:
    name: str
    namespace: str
    count: int


class EventRecorder:
    """`await recorder.event(obj, "Normal", "Created", "created deployment x", action="Create")`."""

    def __init__(self, client: Client, controller: str, instance: str = "") -> None:
        self.client = client
        self.controller = controller
        self.instance = instance or f"{controller}-{uuid.uuid4().hex[:6]}"
        self._seen: dict[tuple[str, str, str, str, str], _Seen] = {}

    async def event(
        self, regarding: Obj, type_: EventKind, reason: str, note: str, *, action: str = "Reconcile"
    ) -> None:
        m = meta(regarding)
        key = (str(m.get("uid", "")), type_, reason, action, note)
        now = _micro(datetime.now(UTC))
        try:
            seen = self._seen.get(key)
            if seen is not None:
                seen.count += 1
                try:
                    await self.client.patch(
                        EVENT,
                        seen.name,
                        {"series": {"count": seen.count, "lastObservedTime": now}},
                        namespace=seen.namespace,
                    )
                    return
                except NotFound:
                    del self._seen[key]  # expired (events live 1 h): start a new one
            ns = namespace_of(regarding) or "default"
            body = {
                "apiVersion": "events.k8s.io/v1",
                "kind": "Event",
                # A name as client-go makes one (the API server refuses a generateName ending in '.').
                "metadata": {"name": f"{name_of(regarding)}.{time.time_ns():x}", "namespace": ns},
                "eventTime": now,
                "reportingController": self.controller,
                "reportingInstance": self.instance,
                "action": action,
                "reason": reason,
                "note": note[:1024],
                "type": type_,
                "regarding": {
                    "apiVersion": regarding.get("apiVersion"),
                    "kind": regarding.get("kind"),
                    "name": name_of(regarding),
                    "namespace": namespace_of(regarding) or None,
                    "uid": m.get("uid"),
                    "resourceVersion": m.get("resourceVersion"),
                },
            }
            created = await self.client.create(EVENT, body)
            self._seen[key] = _Seen(created["metadata"]["name"], ns, 1)
        except RuntimeLibraryError as exc:
            log.warning(
                "could not record event",
                extra={
                    "object": f"{namespace_of(regarding)}/{name_of(regarding)}",
                    "reason": reason,
                    "error": str(exc),
                },
            )
