"""Every account again for a NATS server that comes back (or joins) after missing pushes.

A node that was down while accounts were pushed keeps its old copies (a revocation made
meanwhile would not hold there) until the full resolver's own sync catches it up
(nats-server-cluster.conf `interval`). The bridge does not wait for that:

- it hears of a return at once from the server's own `$SYS.SERVER.<id>.STATSZ` event,
  which a nats-server sends as it starts (a restart gives it a new id) and again when the
  routes change, and from any push reply naming it;
- a `$SYS.REQ.SERVER.PING` survey every `survey_every` seconds is the safety net: events
  are fire-and-forget, and one sent while its routes were still forming is lost;
- the SYS link reconnecting is covered by the bridge's full pass (app.py).

Then every account's last JWT is sent again, under each account's lock (pusher.repush),
so a stale JWT can never follow a newer one. A server that misses one of those is owed
again and retried at its next sighting. Wiring (pb_hooks_bridge/app.py):
`self.cluster = ClusterWatch(self.pusher, self.accounts)` in start(), and
`background.start("cluster-watch", self.cluster.run, self.stopping)` in run().
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from pb_hooks_bridge.accounts import Account, AccountStore
from pb_hooks_bridge.broadcast import Reply
from pb_hooks_bridge.pusher import Pusher, PushError

log = logging.getLogger(__name__)

STATSZ = "$SYS.SERVER.*.STATSZ"
SURVEY_EVERY = 5.0  # seconds
CONCURRENCY = 8  # accounts re-pushed at once


class ClusterWatch:
    def __init__(self, pusher: Pusher, accounts: AccountStore,
                 survey_every: float = SURVEY_EVERY, concurrency: int = CONCURRENCY) -> None:
        self.pusher = pusher
        self.accounts = accounts
        self.survey_every = survey_every
        self.concurrency = concurrency
        self._events_on: NATS | None = None
        self.repushes = 0  # rounds done, for tests and logs

    async def run(self) -> None:
        """Until cancelled (a supervised background task: a failure restarts it)."""
        roster = self.pusher.roster
        next_survey = 0.0
        while True:
            await self._follow_events()
            if time.monotonic() >= next_survey:
                with contextlib.suppress(PushError):  # SYS link down: the next round
                    await self.pusher.survey()
                next_survey = time.monotonic() + self.survey_every
            if roster.returned.is_set() and not await self.repush():
                await asyncio.sleep(1.0)  # owed again at once: not a busy loop
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(roster.returned.wait(),
                                       max(0.0, next_survey - time.monotonic()))

    async def repush(self) -> bool:
        """Send every account again for the owed servers that are up now; False when some
        push failed (they stay owed)."""
        names = self.pusher.roster.take_owed()
        if not names:
            return True
        started = time.monotonic()
        limit = asyncio.Semaphore(self.concurrency)

        async def one(account: Account) -> bool:
            async with limit:
                return await self.pusher.repush(
                    account, lambda: self.accounts.get(account.tenant_id) is account)

        results = await asyncio.gather(*(one(a) for a in list(self.accounts.by_tenant.values())),
                                       return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            self.pusher.roster.owe(names)  # try again at the next sighting or survey
        self.repushes += 1
        log.info("accounts pushed again for returning NATS servers", extra={
            "servers": names, "accounts": sum(r is True for r in results),
            "failed": len(failed), "seconds": round(time.monotonic() - started, 3),
            "error": str(failed[0]) if failed else None})
        return not failed

    async def _follow_events(self) -> None:
        """Subscribe to the servers' STATSZ events on the current SYS connection."""
        nc = self.pusher.nc
        if nc is None or nc is self._events_on or nc.is_closed:
            return
        await nc.subscribe(STATSZ, cb=self._on_statsz)
        await nc.flush()
        self._events_on = nc

    async def _on_statsz(self, msg: Msg) -> None:
        reply = Reply.read(msg.data)
        self.pusher.roster.saw(reply.server, reply.server_id, (reply.body or {}).get("statsz"))
