"""A connection's retirement (used by supervised.py): the work that holds it open, and
closing it gently (drain what can be drained, close what cannot, never raise)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import nats
from nats.aio.client import Client as NATS


class Holds:
    """How much work each connection still has to finish on itself."""

    def __init__(self) -> None:
        self.counts: dict[NATS, int] = {}

    def busy(self, nc: NATS) -> bool:
        return self.counts.get(nc, 0) > 0

    def take(self, nc: NATS) -> Callable[[], None]:
        """Mark `nc` busy now; the returned function (idempotent) releases it."""
        self.counts[nc] = self.counts.get(nc, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.counts[nc] -= 1
            if self.counts[nc] <= 0:
                del self.counts[nc]

        return release


async def drain_subscriptions(nc: NATS, grace: float = 5.0) -> None:
    """Drain every subscription of `nc` except its request inbox (nats-py internals:
    `_subs` and `_inbox_prefix`; the request mux subscription lives under the prefix)."""
    prefix = bytes(getattr(nc, "_inbox_prefix", b"") or b"").decode()
    for sub in list(getattr(nc, "_subs", {}).values()):
        if prefix and sub.subject.startswith(prefix):
            continue
        with contextlib.suppress(Exception):  # closed meanwhile: nothing left to drain
            await asyncio.wait_for(sub.drain(), grace)


async def drain(nc: NATS, grace: float) -> None:
    if nc.is_closed:
        return
    try:
        await asyncio.wait_for(nc.drain(), grace)
    except (TimeoutError, nats.errors.Error, OSError):
        await close(nc)


async def close(nc: NATS) -> None:
    with contextlib.suppress(Exception):
        if not nc.is_closed:
            await nc.close()
