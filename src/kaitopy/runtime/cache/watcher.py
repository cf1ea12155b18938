"""A watch as an async stream of events, parsed straight into frozen objects.

`watch()` opens one watch request and yields its events until the server ends it (timeout) or
the stream stalls. The informer composes it with lists, reconnects and 410 handling.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from kaitopy.runtime.client import Client
from kaitopy.runtime.errors import api_error
from kaitopy.runtime.kinds import Kind
from kaitopy.runtime.objects import Obj, dumps, loads_frozen, meta

EventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


@dataclass(frozen=True)
class WatchEvent:
    type: EventType
    object: Obj

    @property
    def resource_version(self) -> str:
        return str(meta(self.object).get("resourceVersion", ""))

    @property
    def ends_initial_events(self) -> bool:
        return (
            self.type == "BOOKMARK"
            and (meta(self.object).get("annotations") or {}).get(INITIAL_EVENTS_END) == "true"
        )


async def watch(
    client: Client,
    kind: Kind,
    *,
    namespace: str | None = None,
    resource_version: str | None = None,
    label_selector: str | None = None,
    field_selector: str | None = None,
    timeout_seconds: int = 300,
    inactivity_timeout: float | None = None,
    send_initial_events: bool = False,
) -> AsyncIterator[WatchEvent]:
    """Yield the events of one watch request. An ERROR event raises the matching ApiError (410: Gone)."""
    query: dict[str, str | int | bool | None] = {
        "watch": True,
        "allowWatchBookmarks": True,
        "timeoutSeconds": timeout_seconds,
        "labelSelector": label_selector,
        "fieldSelector": field_selector,
        "resourceVersion": resource_version,
    }
    if send_initial_events:
        query["sendInitialEvents"] = True
        query["resourceVersionMatch"] = "NotOlderThan"
    path = kind.path(namespace)
    async with client.stream(path, query=query, read_timeout=inactivity_timeout) as body:
        while True:
            line = await body.readline()
            if not line:
                return
            if line.isspace():
                continue
            event = loads_frozen(line)
            etype = event.get("type")
            obj = event.get("object") or {}
            if etype == "ERROR":
                raise api_error(int(obj.get("code") or 0), dumps(obj), method="WATCH", path=path)
            yield WatchEvent(etype, obj)
