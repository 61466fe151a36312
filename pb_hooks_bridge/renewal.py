"""Service users' JWTs renewed on their own schedule, not on the 10-minute reconciliation.

A JWT is due once it passes half its lifetime (`needs_new_jwt`'s "renewal" threshold is
exp - now < max(ttl, exp - iat)/2, identities.renewal_window; the schedule uses the same
window plus a second, so it is never due before that threshold says yes), long before the
links that use it renew themselves (links.py swaps at 0.7 of the lifetime). Identities
reports every service user's current expiry (`watch`); `run` sleeps until the earliest one
is due and renews it through its row's lane with a copy of the row read there, so a renewal
racing an event or a reconciliation step still issues exactly one JWT. A renewal that
fails, or leaves the row as it was, is retried later with backoff (per row), never in a
tight loop. `run` is meant to run under background.supervised (named, failures logged and
counted, cancelled on stop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from pb_hooks_bridge import metrics
from pb_hooks_bridge.identities import renewal_window

log = logging.getLogger(__name__)

PAST_THRESHOLD = 1.0  # seconds past the half-life, so needs_new_jwt surely says "renewal"
MAX_SLEEP = 300.0  # re-check at least this often (a lost wake-up costs no more)
RETRY_FIRST = 5.0
RETRY_MAX = 300.0
AT_ONCE = 16

Renew = Callable[[str, str], Awaitable[str]]  # (row id, tenant id) -> outcome


class Renewer:
    def __init__(self, ttl: int, renew: Renew) -> None:
        self.ttl = ttl
        self.renew = renew
        self.due: dict[str, tuple[float, str]] = {}  # row id -> (due epoch, tenant id)
        self.retries: dict[str, float] = {}  # row id -> current retry delay
        self.renewed = 0
        self._wake = asyncio.Event()

    def watch(self, row_id: str, tenant_id: str, exp: int | None,
              iat: int | None = None) -> None:
        """A service user's JWT expiry (and iat, when known) as issued or found (exp None:
        it has none to renew)."""
        if exp is None:
            self.due.pop(row_id, None)
            self.retries.pop(row_id, None)
            return
        due = exp - renewal_window(self.ttl, {"exp": exp, "iat": iat}) + PAST_THRESHOLD
        before = self.due.get(row_id)
        if before is not None and row_id in self.retries:
            if due <= before[0]:
                return  # the same, unrenewed JWT: its retry stays where it is
            del self.retries[row_id]  # renewed meanwhile (e.g. by a reconciliation)
        self.due[row_id] = (due, tenant_id)
        if before is None or due < before[0]:
            self._wake.set()

    def next_due(self) -> float | None:
        return min((due for due, _ in self.due.values()), default=None)

    async def run(self) -> None:
        while True:
            self._wake.clear()
            now = time.time()
            ready = [(row_id, tenant) for row_id, (due, tenant) in self.due.items()
                     if due <= now]
            if ready:
                await self._renew_all(ready)
                continue
            upcoming = self.next_due()
            sleep = MAX_SLEEP if upcoming is None else min(MAX_SLEEP, upcoming - now)
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, sleep))
            except TimeoutError:
                pass

    async def _renew_all(self, ready: list[tuple[str, str]]) -> None:
        limit = asyncio.Semaphore(AT_ONCE)

        async def one(row_id: str, tenant_id: str) -> None:
            async with limit:
                await self._renew_one(row_id, tenant_id)

        await asyncio.gather(*(one(r, t) for r, t in ready))

    async def _renew_one(self, row_id: str, tenant_id: str) -> None:
        before = self.due.get(row_id)
        try:
            outcome = await self.renew(row_id, tenant_id)
        except Exception as exc:  # PocketBase or NATS away: this row tries again later
            metrics.BACKGROUND_FAILURES.labels("service-renewal").inc()
            log.warning("service user renewal failed; will retry",
                        extra={"row": row_id, "tenant": tenant_id, "error": str(exc)})
            self._postpone(row_id, tenant_id)
            return
        if outcome == "gone":
            self.due.pop(row_id, None)
            self.retries.pop(row_id, None)
            return
        if self.due.get(row_id) == before:  # nothing new was issued or reported
            log.info("service user not renewed; will look again",
                     extra={"row": row_id, "tenant": tenant_id, "outcome": outcome})
            self._postpone(row_id, tenant_id)
            return
        self.retries.pop(row_id, None)
        if outcome == "issued":
            self.renewed += 1

    def _postpone(self, row_id: str, tenant_id: str) -> None:
        delay = self.retries.get(row_id, RETRY_FIRST / 2) * 2
        delay = min(delay, RETRY_MAX)
        self.retries[row_id] = delay
        self.due[row_id] = (time.time() + delay, tenant_id)
