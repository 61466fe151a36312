"""One full pass: compare every PocketBase row with what was issued and pushed, repair.

Runs at start, after every reconnect (PocketBase or NATS), and periodically (which also
renews service users' JWTs and prunes old revocations). Missed events are never lost:
this pass re-derives everything from the rows, and deleted rows are caught through the
audit ledger of issued keys and the server's own account list.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import nats

from pb_hooks_bridge import metrics
from pb_hooks_bridge.accounts import AccountStore
from pb_hooks_bridge.events import EventRouter
from pb_hooks_bridge.identities import Identities
from pb_hooks_bridge.permissions import RoleError, validate_role
from pb_hooks_bridge.pusher import Pusher, PushError
from pb_hooks_bridge.roles import RoleBook
from pb_hooks_bridge.tenants import Tenants

log = logging.getLogger(__name__)

REPAIRS = {"issued", "revoked", "pushed", "deleted", "orphan"}


@dataclass
class Summary:
    counts: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def add(self, kind: str, outcome: str) -> None:
        self.counts[f"{kind}.{outcome}"] += 1
        if outcome in REPAIRS:
            metrics.REPAIRS.inc()

    @property
    def repairs(self) -> int:
        return sum(n for k, n in self.counts.items() if k.split(".")[1] in REPAIRS)

    def line(self) -> str:
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        return f"reconciled in {self.seconds:.2f}s: {parts or 'nothing to do'}"


class Reconciler:
    def __init__(self, pb: Any, accounts: AccountStore, pusher: Pusher, tenants: Tenants,
                 identities: Identities, roles: RoleBook, router: EventRouter,
                 ttl: int, concurrency: int = 16) -> None:
        self.pb = pb
        self.accounts = accounts
        self.pusher = pusher
        self.tenants = tenants
        self.identities = identities
        self.roles = roles
        self.router = router
        self.ttl = ttl
        self.concurrency = concurrency
        self.lock = asyncio.Lock()

    async def run(self) -> Summary:
        async with self.lock:
            started = time.perf_counter()
            summary = Summary()
            await self._roles(summary)
            self.identities.sidecars.load(await self.pb.list("sidecars"))
            tenants = await self.pb.list("tenants")
            live = {t["id"] for t in tenants}
            for tenant_id in [t for t in list(self.accounts.by_tenant) if t not in live]:
                self.accounts.forget(tenant_id)
            for tenant in tenants:
                summary.add("tenant", await self.tenants.sync(tenant, resend=True))
            await self._orphan_accounts(summary)
            await self._devices(summary)
            await self._service_users(summary)
            await self._ledger(summary)
            await self._prune(summary)
            summary.seconds = time.perf_counter() - started
            metrics.RECONCILES.inc()
            log.info(summary.line(), extra={"repairs": summary.repairs})
            return summary

    async def _roles(self, summary: Summary) -> None:
        listed_at = time.monotonic()
        rows = await self.pb.list("nats_roles")
        good = []
        for row in rows:
            try:
                validate_role(row)
                good.append(row)
                if row.get("error"):
                    await self.pb.update("nats_roles", row["id"], {"error": ""})
            except RoleError as exc:
                summary.add("role", "error")
                if row.get("error") != str(exc):
                    await self.pb.update("nats_roles", row["id"], {"error": str(exc)})
        self.roles.load(good, listed_at)

    async def _orphan_accounts(self, summary: Summary) -> None:
        """Accounts on the server whose tenant was deleted while the bridge was away."""
        known = {a.public_key for a in self.accounts.by_tenant.values()}
        rows = await self.pb.list("nats_accounts", fields="public_key")
        known |= {r["public_key"] for r in rows}
        system = self.pusher.system_account
        orphans = [k for k in await self.pusher.list_accounts() if k not in known and k != system]
        for public_key in orphans:
            try:
                await self.tenants.purge_orphan(public_key, {"account": public_key,
                                                             "orphan": True})
            except (nats.errors.Error, OSError, TimeoutError, PushError) as exc:
                log.warning("could not delete an orphan account's streams; they stay on disk",
                            extra={"account": public_key, "error": str(exc)})
        if orphans:
            await self.pusher.delete(orphans)
            for _ in orphans:
                summary.add("account", "orphan")

    async def _bounded(self, rows: list[dict[str, Any]], kind: str, work: Any,
                       summary: Summary) -> None:
        limit = asyncio.Semaphore(self.concurrency)

        async def one(row: dict[str, Any]) -> None:
            async with limit:
                account = self.accounts.get(row.get("tenant", ""))
                if account is None:
                    return
                try:
                    summary.add(kind, await work(account, row))
                except Exception as exc:  # one bad row never stops the pass
                    summary.add(kind, "failed")
                    log.exception("reconcile step failed",
                                  extra={"kind": kind, "id": row.get("id"), "error": str(exc)})

        await asyncio.gather(*(one(row) for row in rows))

    async def _devices(self, summary: Summary) -> None:
        rows = await self.pb.list("devices")
        await self._bounded(rows, "device", self.identities.sync_device, summary)

    async def _service_users(self, summary: Summary) -> None:
        rows = await self.pb.list("nats_users")
        await self._bounded(rows, "service", self.identities.sync_service_user, summary)
        for row in rows:
            self.tenants.remember_creds(row.get("tenant", ""), row)

    async def _ledger(self, summary: Summary) -> None:
        """Keys issued within the JWT lifetime whose row is gone now: revoke them."""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() - self.ttl))
        issued = await self.pb.list(
            "audit_log", filter=f'action = "user.issued" && created >= "{since}"',
            fields="tenant,target,details,created")
        if not issued:
            return
        devices = await self.pb.list("devices", fields="tenant,nats_public_key,status")
        users = await self.pb.list("nats_users", fields="tenant,public_key,active")
        legit = {(d["tenant"], d["nats_public_key"]) for d in devices
                 if d.get("status") != "disabled" and d.get("nats_public_key")}
        legit |= {(u["tenant"], u["public_key"]) for u in users
                  if u.get("active") and u.get("public_key")}
        for entry in issued:
            details = entry.get("details") or {}
            key = details.get("public_key", "") if isinstance(details, dict) else ""
            account = self.accounts.get(entry.get("tenant", ""))
            if not key or account is None or (account.tenant_id, key) in legit:
                continue
            issued_at = _epoch(entry.get("created", ""))
            if await self.identities.revoke(account, {key: issued_at}, "ledger",
                                            entry.get("target", ""), "row gone"):
                summary.add("ledger", "revoked")

    async def _prune(self, summary: Summary) -> None:
        for account in list(self.accounts.by_tenant.values()):
            if account.prune_revocations(self.ttl + 3600):
                await self.pusher.push(account)
                summary.add("account", "pruned")


def _epoch(stamp: str) -> int:
    try:
        return int(time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) - time.timezone)
    except ValueError:
        return int(time.time())
