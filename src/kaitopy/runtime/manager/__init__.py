"""The process (controller-runtime's pkg/manager): `manager` (client, cache, controllers,
shutdown), `leaderelection`, `health` (probes, /metrics) and `looplag`."""

from kaitopy.runtime.manager.manager import Manager, ManagerSettings

__all__ = ["Manager", "ManagerSettings"]
