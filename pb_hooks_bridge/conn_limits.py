"""Make a tenant's NATS connection limit visible where people look: when an account is at
its `limits.max_connections`, new agents are refused by nats-server with nothing in
PocketBase to say why. Every CHECK_EVERY seconds the bridge asks every server for the
accounts' connection counts (`$SYS.REQ.ACCOUNT.PING.STATZ`, one answer per server in a
cluster, summed), writes a message starting with `PREFIX` into `tenants.error` of a tenant
at its limit, clears it (only that message) once the tenant is below `CLEAR_BELOW` of it,
and exports both figures as metrics.

The limit counts every connection of the account, Cairn's own included (the bridge's and
the router's links, two each for a moment while one renews).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS

from cairn_common.pocketbase import PocketBase, PocketBaseError
from pb_hooks_bridge import metrics
from pb_hooks_bridge.accounts import AccountStore

log = logging.getLogger(__name__)

STATZ = "$SYS.REQ.ACCOUNT.PING.STATZ"
PREFIX = "NATS connection limit reached"
CHECK_EVERY = 30.0  # seconds between checks
ANSWERS_WITHIN = 1.0  # seconds to collect the servers' answers
CLEAR_BELOW = 0.95  # the message goes once connections are below this share of the limit


def is_limit_message(error: str | None) -> bool:
    return bool(error) and str(error).startswith(PREFIX)


class ConnLimits:
    def __init__(self, pb: PocketBase, accounts: AccountStore,
                 sys_nc: Callable[[], NATS | None]) -> None:
        self.pb = pb
        self.accounts = accounts
        self.sys_nc = sys_nc

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY)
            await self.check()

    async def counts(self) -> dict[str, int]:
        """Account public key -> connections, summed over every server that answered."""
        nc = self.sys_nc()
        if nc is None or not nc.is_connected:
            return {}
        inbox = nc.new_inbox()
        answers: list[bytes] = []

        async def collect(msg: Any) -> None:
            answers.append(msg.data)

        sub = await nc.subscribe(inbox, cb=collect)
        try:
            await nc.publish(STATZ, json.dumps({"accounts": [], "include_unused": False})
                             .encode(), reply=inbox)
            await nc.flush()
            await asyncio.sleep(ANSWERS_WITHIN)
        finally:
            await sub.unsubscribe()
        totals: dict[str, int] = {}
        for raw in answers:
            try:
                stats = json.loads(raw).get("data", {}).get("account_statz") or []
                for stat in stats:
                    key, conns = stat.get("acc"), stat.get("conns")
                    if isinstance(key, str) and isinstance(conns, int):
                        totals[key] = totals.get(key, 0) + conns
            except (ValueError, AttributeError):
                log.warning("unreadable account statistics from a NATS server")
        return totals

    async def check(self) -> dict[str, int]:
        """One round: tenants at their limit get the message, those well below lose it.
        Returns tenant id -> connections for the tenants checked."""
        totals = await self.counts()
        if not totals:  # no server answered (or none is up): change nothing
            return {}
        flagged = {row["id"]: row for row in await self.pb.list(
            "tenants", filter=f'error ~ "{PREFIX}"', fields="id,error")}
        seen: dict[str, int] = {}
        for account in list(self.accounts.by_tenant.values()):
            conns = totals.get(account.public_key, 0)
            limit = int(account.limits.get("conn", -1))
            seen[account.tenant_id] = conns
            metrics.ACCOUNT_CONNECTIONS.labels(account.slug).set(conns)
            metrics.ACCOUNT_CONNECTION_LIMIT.labels(account.slug).set(limit)
            message = None
            if account.active and limit > 0 and conns >= limit:
                message = (f"{PREFIX}: {conns:,} of {limit:,} connections "
                           "(limits.max_connections, Cairn's own links included); "
                           "nats-server refuses new agents of this tenant until some "
                           "disconnect or a superuser raises the limit")
            try:
                await self._show(account.tenant_id, message, flagged.get(account.tenant_id),
                                 conns < limit * CLEAR_BELOW or limit <= 0)
            except PocketBaseError as exc:
                log.warning("connection limit not shown", extra={
                    "tenant": account.slug, "error": str(exc)})
        return seen

    async def _show(self, tenant_id: str, message: str | None, flagged: dict[str, Any] | None,
                    well_below: bool) -> None:
        if message is not None:
            if flagged is None or flagged.get("error") != message:
                await self.pb.update("tenants", tenant_id, {"error": message})
                log.warning("tenant at its NATS connection limit",
                            extra={"tenant": tenant_id, "error": message})
        elif flagged is not None and well_below:
            await self.pb.update("tenants", tenant_id, {"error": ""})
