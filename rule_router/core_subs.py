"""A tenant router's core subscriptions (the rule subjects that are not TELEMETRY), kept in
line with the rule set and moved whole to a new connection without losing a message.

They are in one queue group named after the router's identity (tenant.py's docstring):
two connections of one router while one replaces the other never both evaluate a
message. A move subscribes on the new connection first and flushes, so the server has the
new interest, and only then drains the old subscriptions: what they already hold is still
handled (nats-py's unsubscribe would drop it), and nothing arrives in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

log = logging.getLogger(__name__)

SUB_FLUSH = 5.0  # seconds for the server to confirm a new connection's subscriptions
SUB_DRAIN = 5.0  # seconds an old connection's subscription may take to hand over its queue


class CoreSubscriptions:
    def __init__(self, queue: str, on_message: Callable[[Msg], Awaitable[None]]) -> None:
        self.queue = queue
        self.on_message = on_message
        self.subs: dict[str, Any] = {}  # subject -> subscription
        self.made_on: NATS | None = None  # the connection `subs` were made on
        self._lock = asyncio.Lock()  # swaps can come in bursts; one diff at a time

    async def sync(self, current: Callable[[], NATS | None],
                   wanted_now: Callable[[], set[str]]) -> None:
        """Subscribe to what `wanted_now()` lists on `current()` and nothing else (all of
        them again when that is not the connection the current ones were made on). Both
        are read under the lock: a sync queued behind another acts on what is current
        when its turn comes, not on a connection that was replaced (or given up) since."""
        async with self._lock:
            nc, wanted = current(), wanted_now()
            if nc is None:
                return
            if self.made_on is not nc:  # made on a connection that is gone (or none)
                await self._move(nc, wanted)
                return
            for subject in set(self.subs) - wanted:
                await self.subs.pop(subject).unsubscribe()
            for subject in wanted - set(self.subs):
                self.subs[subject] = await nc.subscribe(subject, queue=self.queue,
                                                        cb=self.on_message)

    async def _move(self, nc: NATS, wanted: set[str]) -> None:
        fresh: dict[str, Any] = {}
        try:
            for subject in wanted:
                fresh[subject] = await nc.subscribe(subject, queue=self.queue,
                                                    cb=self.on_message)
            await nc.flush(timeout=SUB_FLUSH)
        except BaseException:
            for sub in fresh.values():
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            raise
        old, self.subs, self.made_on = self.subs, fresh, nc
        if old:
            await asyncio.wait([asyncio.create_task(_drain(sub)) for sub in old.values()])


async def _drain(sub: Any) -> None:
    """Drain an old connection's subscription, bounded (a closed one has nothing left)."""
    try:
        await asyncio.wait_for(sub.drain(), SUB_DRAIN)
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        log.debug("old core subscription not drained", extra={"error": str(exc) or repr(exc)})
