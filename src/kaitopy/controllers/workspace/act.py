"""Act: carry out a Decision's writes and events, in order. No choices are made here beyond what
an answer of the API server means: an object already there (created by an earlier pass the cache
has not shown yet) or already gone is what was wanted."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

from kaitopy.controllers.workspace.decide import Action, Apply, Create, Delete, Emit, Patch
from kaitopy.runtime import (
    AlreadyExists,
    Client,
    EventRecorder,
    Forbidden,
    NotFound,
    apply,
)
from kaitopy.runtime.controller.reconcile import reconcile_logger
from kaitopy.runtime.objects import Obj

FIELD_MANAGER = "kaitopy-workspace"
log = reconcile_logger(__name__)


class Actor:
    def __init__(self, client: Client, recorder: EventRecorder) -> None:
        self.client = client
        self.recorder = recorder

    async def run(self, ws: Obj, actions: Iterable[Action]) -> None:
        for action in actions:
            await self.one(ws, action)

    async def one(self, ws: Obj, action: Action) -> None:
        if isinstance(action, Emit):
            await self.tell(ws, action)
        elif isinstance(action, Create):
            try:
                await self.client.create(action.kind, action.body)
            except AlreadyExists:
                return
            if action.event is not None:
                await self.tell(ws, action.event)
        elif isinstance(action, Apply):
            body = action.body
            _, written = await apply(
                self.client, action.kind, body, current=action.current, field_manager=FIELD_MANAGER
            )
            if written:
                key = f"{body['metadata'].get('namespace')}/{body['metadata']['name']}"
                log.info("applied", extra={"kind": action.kind.kind, "object": key})
        elif isinstance(action, Patch):
            with contextlib.suppress(NotFound):
                await self.client.patch(
                    action.kind, action.name, dict(action.patch), namespace=action.namespace
                )
        else:
            with contextlib.suppress(NotFound):
                await self.client.delete(
                    action.kind,
                    action.name,
                    namespace=action.namespace,
                    propagation_policy=action.propagation_policy,
                )
            if action.event is not None:
                await self.tell(ws, action.event)

    async def tell(self, ws: Obj, e: Emit) -> None:
        await self.recorder.event(ws, e.type, e.reason, e.message, action=e.action)

    async def stop(self, ws: Obj, deletes: Sequence[Delete]) -> list[str]:
        """Delete the workloads; returns those still there (being deleted in the foreground)."""
        left = []
        for d in deletes:
            try:
                await self.client.delete(
                    d.kind, d.name, namespace=d.namespace, propagation_policy=d.propagation_policy
                )
            except NotFound:
                continue
            except Forbidden as err:
                # RBAC older than this code: do not hold the deletion hostage; garbage collection
                # removes the workload once the workspace is gone, as it did before.
                log.warning(
                    "cannot stop the workload first",
                    extra={"workspace": f"{d.namespace}/{d.name}", "error": str(err)},
                )
                continue
            left.append(f"{d.kind.kind} {d.name}")
        return left
