"""A pass that runs every so often for the life of the process (garbage collection, liveness).

A pass that fails (the API server restarting, the cloud timing out) is logged and tried again at
the next tick: a runnable that raised would stop the whole manager, and with it every
controller, over one unanswered list call."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def every(interval_s: float, one_pass: Callable[[], Awaitable[object]], what: str) -> None:
    while True:
        try:
            await one_pass()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("%s pass failed; trying again in %.0fs", what, interval_s, exc_info=True)
        await asyncio.sleep(interval_s)
