"""kaitopy.runtime: a generic asyncio controller library (client-go + controller-runtime, in Python).

It knows nothing about any particular operator. Data flows one way:
watch -> cache -> queue -> reconcile -> apply -> status.

Usage::

    from kaitopy.runtime import (Client, Manager, ManagerSettings, Request, Result, kinds, apply,
                                 patch_status, set_condition, set_controller_reference)

    async def main() -> None:
        async with await Client.auto() as client:
            mgr = Manager(client, ManagerSettings(probe_port=8081))
            widgets = await client.kind("example.com/v1", "Widget")      # discovery, cached
            configmaps = mgr.cache.store(kinds.CONFIG_MAP)

            async def reconcile(req: Request) -> Result | None:
                widget = mgr.cache.store(widgets).get(req.key)           # read-only, no copy
                if widget is None:
                    return None                                          # deleted; GC does the rest
                desired = set_controller_reference(widget, {
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": req.name, "namespace": req.namespace},
                    "data": {"size": str(widget["spec"]["size"])}})
                await apply(client, kinds.CONFIG_MAP, desired, field_manager="widgets",
                            current=configmaps.get(req.key))             # no write if unchanged
                return Result(requeue_after=300)

            mgr.controller("widgets").for_(widgets).owns(kinds.CONFIG_MAP).build(reconcile)
            await mgr.run()          # until SIGTERM; raises LeadershipLost if the lease is lost

Objects are JSON: plain dicts you own, or frozen `Obj` views from the cache (`thaw()` copies).
Errors from the API server are `ApiError` subclasses (NotFound, Conflict, AlreadyExists, Invalid,
Gone, TooManyRequests, ...); a reconcile raising `TerminalError` is not retried, any other exception
is retried with per-object exponential backoff.
"""

from kaitopy.runtime import kinds
from kaitopy.runtime.apply import apply, create_or_update, is_subset, needs_apply, patch_status
from kaitopy.runtime.backoff import Backoff
from kaitopy.runtime.cache.informer import EventHandler, Informer, InformerCache, InformerSettings
from kaitopy.runtime.cache.store import (
    MATCH_ALL,
    Store,
    index_by_label,
    index_by_match_labels,
    index_by_owner_uid,
)
from kaitopy.runtime.cache.watcher import WatchEvent, watch
from kaitopy.runtime.cache.writes import RecentWrites
from kaitopy.runtime.client import Client, ClientSettings, ObjectList
from kaitopy.runtime.clock import Clock, FakeClock, RealClock
from kaitopy.runtime.conditions import find_condition, is_true, remove_condition, set_condition
from kaitopy.runtime.controller import Controller, ControllerSettings, predicates
from kaitopy.runtime.controller.builder import ControllerBuilder
from kaitopy.runtime.controller.handlers import owner_mapper, request_for
from kaitopy.runtime.controller.predicates import Predicate
from kaitopy.runtime.controller.ratelimit import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
    RateLimiter,
    default_controller_rate_limiter,
)
from kaitopy.runtime.controller.reconcile import (
    Reconciler,
    Request,
    Result,
    current_reconcile,
    reconcile_logger,
)
from kaitopy.runtime.controller.workqueue import ShutDown, WorkQueue
from kaitopy.runtime.errors import (
    AlreadyExists,
    ApiError,
    BadRequest,
    Conflict,
    FieldCause,
    Forbidden,
    Gone,
    Invalid,
    LeadershipLost,
    NotFound,
    RuntimeLibraryError,
    ServerError,
    TerminalError,
    TooManyRequests,
    TransportError,
    Unauthorized,
)
from kaitopy.runtime.events import EventRecorder, EventRecorderSettings
from kaitopy.runtime.finalizers import add_finalizer, has_finalizer, is_deleting, remove_finalizer
from kaitopy.runtime.kinds import Kind
from kaitopy.runtime.manager import Manager, ManagerSettings
from kaitopy.runtime.manager.leaderelection import LeaderElectionSettings, LeaderElector
from kaitopy.runtime.metrics import Metrics
from kaitopy.runtime.objects import Obj, freeze, key_of, name_of, namespace_of, strip_noise, thaw, trim_node
from kaitopy.runtime.ownerrefs import (
    AlreadyOwned,
    controller_of,
    is_controlled_by,
    owner_reference,
    set_controller_reference,
)

__all__ = [
    "MATCH_ALL",
    "AlreadyExists",
    "AlreadyOwned",
    "ApiError",
    "Backoff",
    "BadRequest",
    "BucketRateLimiter",
    "Client",
    "ClientSettings",
    "Clock",
    "Conflict",
    "Controller",
    "ControllerBuilder",
    "ControllerSettings",
    "EventHandler",
    "EventRecorder",
    "EventRecorderSettings",
    "FakeClock",
    "FieldCause",
    "Forbidden",
    "Gone",
    "Informer",
    "InformerCache",
    "InformerSettings",
    "Invalid",
    "ItemExponentialFailureRateLimiter",
    "Kind",
    "LeaderElectionSettings",
    "LeaderElector",
    "LeadershipLost",
    "Manager",
    "ManagerSettings",
    "MaxOfRateLimiter",
    "Metrics",
    "NotFound",
    "Obj",
    "ObjectList",
    "Predicate",
    "RateLimiter",
    "RealClock",
    "RecentWrites",
    "Reconciler",
    "Request",
    "Result",
    "RuntimeLibraryError",
    "ServerError",
    "ShutDown",
    "Store",
    "TerminalError",
    "TooManyRequests",
    "TransportError",
    "Unauthorized",
    "WatchEvent",
    "WorkQueue",
    "add_finalizer",
    "apply",
    "controller_of",
    "create_or_update",
    "current_reconcile",
    "default_controller_rate_limiter",
    "find_condition",
    "freeze",
    "has_finalizer",
    "index_by_label",
    "index_by_match_labels",
    "index_by_owner_uid",
    "is_controlled_by",
    "is_deleting",
    "is_subset",
    "is_true",
    "key_of",
    "kinds",
    "name_of",
    "namespace_of",
    "needs_apply",
    "owner_mapper",
    "owner_reference",
    "patch_status",
    "predicates",
    "reconcile_logger",
    "remove_condition",
    "remove_finalizer",
    "request_for",
    "set_condition",
    "set_controller_reference",
    "strip_noise",
    "thaw",
    "trim_node",
    "watch",
]
