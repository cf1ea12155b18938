"""The controller side (controller-runtime's pkg/controller, handler, predicate, reconcile,
builder): `workqueue` and `ratelimit` (client-go's queue contract), `handlers` and `predicates`
(events to requests), `reconcile` (the Request/Result contract), `controller` (N workers over a
queue) and `builder` (`for_/owns/watches`)."""

from kaitopy.runtime.controller.controller import Controller, ControllerSettings

__all__ = ["Controller", "ControllerSettings"]
