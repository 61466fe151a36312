"""Background tasks that must outlive their own failures: an exception is logged, counted
(`cairn_bridge_background_failures_total{task}`) and the task restarted with backoff; a
cancel (the bridge stopping) ends it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pb_hooks_bridge import metrics

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0


async def supervised(name: str, run: Callable[[], Awaitable[None]], stopping: asyncio.Event,
                     backoff_max: float = BACKOFF_MAX) -> None:
    """Run `run()` until it returns or `stopping` is set, restarting it after failures."""
    backoff = BACKOFF_FIRST
    while not stopping.is_set():
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            metrics.BACKGROUND_FAILURES.labels(name).inc()
            log.exception("background task failed; restarting it",
                          extra={"task": name, "retry_in": backoff, "error": str(exc)})
            try:
                await asyncio.wait_for(stopping.wait(), backoff)
            except TimeoutError:
                pass
            backoff = min(backoff * 2, backoff_max)


def start(name: str, run: Callable[[], Awaitable[None]],
          stopping: asyncio.Event) -> asyncio.Task[None]:
    """A named, supervised task (cancel it, e.g. with cancel_and_wait, to stop it)."""
    return asyncio.create_task(supervised(name, run, stopping), name=name)
