"""Run work concurrently across keys but strictly in order within one key.

Events for one record must apply in the order they happened; events for different records
may overlap, up to a global limit, which is what makes bulk enrollment fast.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from cairn_common.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class Lanes:
    def __init__(self, concurrency: int) -> None:
        self.limit = asyncio.Semaphore(concurrency)
        self.locks: dict[str, asyncio.Lock] = {}
        self.pending: dict[str, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def submit(self, key: str, work: Callable[[], Awaitable[object]]) -> asyncio.Task[None]:
        lock = self.locks.setdefault(key, asyncio.Lock())
        self.pending[key] = self.pending.get(key, 0) + 1
        task = asyncio.create_task(self._run(key, lock, work), name=f"lane:{key}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _run(self, key: str, lock: asyncio.Lock,
                   work: Callable[[], Awaitable[object]]) -> None:
        try:
            async with lock:  # FIFO: tasks reach the lock in submission order
                async with self.limit:
                    await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handler failed", extra={"key": key})
        finally:
            self.pending[key] -= 1
            if self.pending[key] == 0:
                del self.pending[key]
                del self.locks[key]

    async def drain(self, grace: float) -> None:
        """Wait (bounded) for submitted work, then cancel what is left."""
        if not self.tasks:
            return
        _, pending = await asyncio.wait(set(self.tasks), timeout=grace)
        await cancel_and_wait(pending)
