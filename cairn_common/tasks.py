"""Stopping background tasks for real.

Python 3.11's `asyncio.wait_for` (used inside nats-py's fetch and request, and by our own
loops) returns the inner result instead of raising when a cancellation and that result
arrive at the same moment. One `cancel()` can therefore be swallowed and a `while True`
loop carries on, and a `gather` after it waits forever. `cancel_and_wait` repeats the
cancel until each task has ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None], retry: float = 0.5,
                          ) -> None:
    """Cancel `tasks` and return once all of them are done (None entries are skipped)."""
    every = [t for t in tasks if t is not None]
    pending = {t for t in every if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=retry)
    for task in every:  # mark failures as seen: they were logged where they happened
        if not task.cancelled():
            task.exception()
