"""Waiting for an eventually-true condition, with a failure message that says what was seen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    *,
    until: Callable[[T], bool] = bool,
    timeout: float = 60.0,
    interval: float = 0.25,
    what: str = "condition",
    stop_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `probe` until `until(result)` holds; on timeout fail with the last result seen.
    Exceptions of the `stop_on` types propagate at once instead of being retried."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    last_error: BaseException | None = None
    while True:
        try:
            last = await probe()
            last_error = None
            if until(last):
                return last
        except stop_on:
            raise
        except Exception as exc:  # the thing may not exist yet; report the last error on timeout
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f"last error: {last_error!r}" if last_error else f"last value: {last!r}"
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; {detail}")
        await asyncio.sleep(interval)
