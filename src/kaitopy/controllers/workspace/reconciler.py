"""The Workspace reconciler: get -> finalize -> observe -> decide -> act -> write status.

Level-triggered: every pass recomputes everything from what it sees. `observe` (observe.py)
gathers plain data from the caches and the few live reads; `decide` (decide.py) is pure; `act`
(act.py) does the writes, each skipped when nothing changed; the status goes last."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from datetime import UTC, datetime

from kaitopy.controllers.workspace.act import FIELD_MANAGER, Actor
from kaitopy.controllers.workspace.adapterdelivery import AdapterReader
from kaitopy.controllers.workspace.decide import (
    EXPLAIN_REQUEUE_S,
    WAITING_REQUEUE_S,
    Decision,
    Refusal,
    decide,
    decide_deletion,
    decide_stop,
)
from kaitopy.controllers.workspace.metrics import StartupMetrics
from kaitopy.controllers.workspace.observe import (
    CLAIMS_BY_WORKSPACE,
    NODES_BY_WORKSPACE,
    PODS_BY_WORKSPACE,
    Observed,
    Observer,
    Stores,
    node_owner_key,
    workspace_key_of_labels,
)
from kaitopy.controllers.workspace.plan import Planner, Settings
from kaitopy.runtime import (
    ApiError,
    Client,
    Conflict,
    EventRecorder,
    Kind,
    NotFound,
    Request,
    Result,
    add_finalizer,
    has_finalizer,
    is_deleting,
    patch_status,
    remove_finalizer,
)
from kaitopy.runtime.cache.writes import RecentWrites
from kaitopy.runtime.controller.reconcile import reconcile_logger
from kaitopy.runtime.objects import Obj

FINALIZER = "workspace.finalizer.kaito.sh"
log = reconcile_logger(__name__)

__all__ = [
    "CLAIMS_BY_WORKSPACE",
    "EXPLAIN_REQUEUE_S",
    "FIELD_MANAGER",
    "FINALIZER",
    "NODES_BY_WORKSPACE",
    "PODS_BY_WORKSPACE",
    "WAITING_REQUEUE_S",
    "Planner",
    "Stores",
    "WorkspaceReconciler",
    "keys_to_requests",
    "node_owner_key",
    "workspace_key_of_labels",
]


class WorkspaceReconciler:
    def __init__(
        self,
        client: Client,
        stores: Stores,
        planner: Planner,
        recorder: EventRecorder,
        settings: Settings,
        workspace_kind: Kind,
        *,
        startup: StartupMetrics | None = None,
        adapter_reader: AdapterReader | None = None,
    ) -> None:
        self.client = client
        self.startup = startup
        self.s = stores
        self.settings = settings
        self.kind = workspace_kind
        self.observer = Observer(client, stores, planner, settings, adapter_reader)
        self.actor = Actor(client, recorder)
        # This controller's own writes, until the watch brings them: reconciling an older copy
        # would fail its conditional status patch with Conflict (or undo the newer status).
        self.latest = RecentWrites(stores.workspaces)

    @property
    def byo(self) -> bool:
        return self.settings.node_provisioner == "byo"

    async def reconcile(self, request: Request) -> Result | None:
        ws = self.latest.get(request.key)  # get
        if ws is None:
            self.observer.first_seen.forget(request.key)
            return None
        if is_deleting(ws):  # finalize
            return await self._finalize(ws)
        if not has_finalizer(ws, FINALIZER):
            ws = await add_finalizer(self.client, self.kind, ws, FINALIZER)
            self.latest.remember(ws)
        observed = await self.observer.observe(ws)  # observe
        decision = await self._decide(ws, observed)  # decide
        await self.actor.run(ws, decision.claims)  # act
        refused = await self._act_workload(ws, decision)
        if refused is not None:
            decision = decide(ws, observed, self.settings, datetime.now(UTC), refused=refused[1])
        stored, written = await patch_status(self.client, self.kind, ws, decision.status)  # status
        self.latest.remember(stored)
        if written:
            log.info("workspace status", extra={"state": decision.state, "workspace": request.key})
        if decision.startup is not None and self.startup is not None:
            self.startup.observe(*decision.startup)
        await self.actor.run(ws, decision.after_status)
        if refused is not None:
            raise refused[0]  # fail the pass so that it retries with backoff
        return Result(requeue_after=decision.requeue_after) if decision.requeue_after else None

    async def _decide(self, ws: Obj, observed: Observed) -> Decision:
        now = datetime.now(UTC)
        decision = decide(ws, observed, self.settings, now)
        if decision.wants_events:
            # Events no cache holds: read for the pods the decision asked about, then decide
            # again with them (once: the pods are the same, so nothing new is asked).
            observed = await self.observer.with_events(observed, decision.wants_events)
            decision = decide(ws, observed, self.settings, now)
        return decision

    async def _act_workload(self, ws: Obj, decision: Decision) -> tuple[ApiError, Refusal] | None:
        try:
            await self.actor.run(ws, decision.workload)
        except Conflict:
            raise  # a stale cache: the retry reads fresh data, nothing to tell the user
        except ApiError as err:
            if not decision.refusable:
                raise
            # Show why on the workspace (e.g. "failed to allocate a serviceIP: range is full"),
            # then fail the reconcile so it retries with backoff.
            return err, Refusal(err.status, err.reason, err.message)
        return None

    async def _finalize(self, ws: Obj) -> Result | None:
        if not has_finalizer(ws, FINALIZER):
            return None
        dying = await self.observer.dying(ws, byo=self.byo)
        stop = decide_stop(ws, dying)
        left = [*stop.stopping, *await self.actor.stop(ws, stop.delete)]
        deletion = decide_deletion(ws, dying, left, datetime.now(UTC))
        if deletion.remove_finalizer:
            with contextlib.suppress(NotFound):  # gone already: nothing left to hold back
                await remove_finalizer(self.client, self.kind, ws, FINALIZER)
            return None
        if deletion.status is not None:
            self.latest.remember((await patch_status(self.client, self.kind, ws, deletion.status))[0])
        await self.actor.run(ws, deletion.delete_claims)
        return Result(requeue_after=deletion.requeue_after) if deletion.requeue_after else None


def keys_to_requests(keys: Iterable[str]) -> list[Request]:
    out = []
    for k in keys:
        ns, _, name = k.partition("/")
        out.append(Request(ns, name))
    return out
