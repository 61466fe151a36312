"""Reconciliation: compare PocketBase rows with what was issued and pushed, and repair.

Full pass (`run`): at start, periodically (which also renews and prunes revocations) and
after a NATS reconnect. It re-derives everything from the rows; deleted rows are caught
through the audit ledger of issued keys and the server's own account list.
Catch-up (`catch_up`): after the realtime stream reconnects. Only rows updated since the
newest version seen of each collection (or the last full listing, if later), minus a
margin, plus the cheap checks for what was deleted meanwhile (tenant ids, orphan accounts,
the ledger).

A pass never undoes a newer change. Every per-row step runs in the record's lane (the same
key as its live events) through EventRouter.apply, which re-reads a listed row when the
bridge has already seen a newer version of it: freshness.py keeps id -> latest `updated`,
fed by events on arrival, by listings and by the bridge's own writes (the catch-up
watermark is separate: only delivered events and fully applied catch-up listings move it,
see freshness.py). That was chosen over
re-reading every row under its lane: a pass touches every row, and a GET per device every
ten minutes would double the pass's load on PocketBase for the few rows that changed while
it ran. A change landing after a step read its copy is queued behind it in the same lane
(and applied next), and a grant computed from the older copy is refused by its write
precondition (pb_hooks/updates.pb.js). Service users and tenants are few and always
re-read.
"""

from __future__ import annotations

import asyncio
import calendar
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
CATCH_UP_MARGIN = 60.0  # seconds listed before the newest version seen, for clock skew
PRUNE_MARGIN = 60.0  # freshness entries older than a full pass's start by this go
KINDS = {"tenants": "tenant", "devices": "device", "nats_users": "service",
         "person_keys": "person"}
EXPIRED_LOGINS_KEPT = 3600  # seconds an expired or revoked login's row stays, for its owner


@dataclass
class Summary:
    counts: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    kind: str = "full"

    def add(self, kind: str, outcome: str) -> None:
        self.counts[f"{kind}.{outcome}"] += 1
        if outcome in REPAIRS:
            metrics.REPAIRS.inc()

    @property
    def repairs(self) -> int:
        return sum(n for k, n in self.counts.items() if k.split(".")[1] in REPAIRS)

    def line(self) -> str:
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        verb = "reconciled" if self.kind == "full" else "caught up"
        return f"{verb} in {self.seconds:.2f}s: {parts or 'nothing to do'}"


class Reconciler:
    def __init__(self, pb: Any, accounts: AccountStore, pusher: Pusher, tenants: Tenants,
                 identities: Identities, roles: RoleBook, router: EventRouter,
                 ttl: int, concurrency: int = 16) -> None:
        self.pb = pb
        self.accounts = accounts
        self.pusher = pusher
        self.tenants = tenants
        self.identities = identities
        self.fresh = identities.freshness
        self.roles = roles
        self.router = router
        self.lanes = router.lanes
        self.ttl = ttl
        self.concurrency = concurrency  # row steps of one pass in the lanes at once
        self.lock = asyncio.Lock()
        self.full_listed_at = 0.0  # epoch seconds the last full pass began listing
        self.own_accounts: set[str] = set()  # Cairn's own accounts: never orphans
        self.margin = CATCH_UP_MARGIN
        self.last: Summary | None = None

    async def run(self) -> Summary:
        """The full pass."""
        async with self.lock:
            started, began, began_mono = time.perf_counter(), time.time(), time.monotonic()
            summary = Summary()
            await self._roles(summary)
            await self._load_sidecars()
            tenants = await self.pb.list("tenants")
            self._forget_gone({t["id"] for t in tenants})
            await self.rows("tenants", tenants, summary)
            await self._orphan_accounts(summary)
            await self.rows("devices", await self.pb.list("devices"), summary)
            await self.rows("nats_users", await self.pb.list("nats_users"), summary)
            await self._people_caches()
            await self.rows("person_keys", await self.pb.list("person_keys"), summary)
            await self._ledger(summary)
            await self._prune(summary)
            await self._old_logins(summary)
            self.full_listed_at = began
            self.fresh.prune(before=began_mono - PRUNE_MARGIN)
            return self._done(summary, started)

    async def _load_sidecars(self) -> None:
        """A listing read before a live event must not undo it: a sidecar deleted
        meanwhile stays gone (else every tenant re-issues its rows), a newer copy stays,
        and one created after the listing stays."""
        began = time.monotonic()
        book, listed = self.identities.sidecars, await self.pb.list("sidecars")
        rows = {}
        for row in listed:
            if self.fresh.deleted("sidecars", row["id"]):
                continue
            if self.fresh.stale("sidecars", row):
                row = book.rows.get(row.get("name", ""), row)
            rows[row.get("name", "")] = row
        for name, row in book.rows.items():
            if name not in rows and self.fresh.live_since("sidecars", row.get("id", ""), began):
                rows[name] = row  # created after the listing began
        book.load(list(rows.values()))

    async def catch_up(self, margin: float | None = None) -> Summary:
        """After a gap in the realtime stream: what changed (or went) since."""
        margin = self.margin if margin is None else margin
        async with self.lock:
            started = time.perf_counter()
            summary = Summary(kind="catch-up")
            await self._roles(summary)
            await self._load_sidecars()
            self._forget_gone({t["id"] for t in await self.pb.list("tenants", fields="id")})
            listed: dict[str, str] = {}  # collection -> newest `updated` applied in full
            await self._people_caches()
            for collection in ("tenants", "devices", "nats_users", "person_keys"):
                since = self.fresh.watermark(collection, self.full_listed_at, margin)
                rows = await self.pb.list(collection, filter=f'updated >= "{since}"')
                if not await self.rows(collection, rows, summary):
                    listed[collection] = max((str(r.get("updated") or "") for r in rows),
                                             default="")
            await self._orphan_accounts(summary)
            await self._ledger(summary)
            # only now (all done): a catch-up that fails leaves the watermarks where they were
            for collection, newest in listed.items():
                self.fresh.advance(collection, newest)
            return self._done(summary, started)

    def _done(self, summary: Summary, started: float) -> Summary:
        summary.seconds = time.perf_counter() - started
        metrics.RECONCILES.inc()
        self.last = summary
        log.info(summary.line(), extra={"repairs": summary.repairs, "pass": summary.kind})
        return summary

    def _forget_gone(self, live: set[str]) -> None:
        for tenant_id in [t for t in list(self.accounts.by_tenant) if t not in live]:
            self.accounts.forget(tenant_id)

    async def rows(self, collection: str, rows: list[dict[str, Any]],
                   summary: Summary) -> int:
        """One step per row, each in the row's lane, at most `concurrency` at once.
        Returns how many steps failed."""
        kind = KINDS[collection]
        limit = asyncio.Semaphore(self.concurrency)
        failed = 0

        async def one(row: dict[str, Any]) -> None:
            nonlocal failed
            if collection != "tenants" and self.accounts.get(row.get("tenant", "")) is None:
                return  # its tenant is gone or could not be provisioned
            async with limit:
                try:
                    outcome = await self.lanes.call(
                        f"{collection}:{row['id']}",
                        lambda: self.router.apply(collection, row, resend=True))
                    summary.add(kind, outcome)
                except Exception as exc:  # one bad row never stops the pass
                    failed += 1
                    summary.add(kind, "failed")
                    log.exception("reconcile step failed",
                                  extra={"kind": kind, "id": row.get("id"), "error": str(exc)})

        await asyncio.gather(*(one(row) for row in rows))
        return failed

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

    async def _people_caches(self) -> None:
        """Memberships and disabled users, for the person_keys steps that follow."""
        listed_at = time.monotonic()
        memberships = await self.pb.list("memberships", fields="id,user,tenant,role,updated")
        disabled = await self.pb.list("users", filter="disabled = true", fields="id")
        self.router.people.load(memberships, [u["id"] for u in disabled], listed_at)

    async def _old_logins(self, summary: Summary) -> None:
        """Rows of logins that expired or were revoked a while ago go (nothing to revoke:
        their keys are expired or revoked already)."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S",
                              time.gmtime(time.time() - EXPIRED_LOGINS_KEPT))
        rows = await self.pb.list(
            "person_keys", fields="id",
            filter=f'(jwt_expires != "" && jwt_expires < "{stamp}") || '
                   f'(error ~ "revoked:" && updated < "{stamp}")')
        for row in rows:
            try:
                await self.pb.delete("person_keys", row["id"])
                summary.add("person", "deleted")
            except Exception as exc:  # the next pass tries again
                log.warning("could not delete an old login", extra={"id": row["id"],
                                                                    "error": str(exc)})

    async def _orphan_accounts(self, summary: Summary) -> None:
        """Accounts on the server whose tenant was deleted while the bridge was away."""
        known = {a.public_key for a in self.accounts.by_tenant.values()}
        rows = await self.pb.list("nats_accounts", fields="public_key")
        known |= {r["public_key"] for r in rows}
        own = {self.pusher.system_account, *self.own_accounts}  # SYS, cairn-control
        orphans = [k for k in await self.pusher.list_accounts() if k not in known and k not in own]
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
        people = await self.pb.list("person_keys", fields="tenant,public_key,jwt,error")
        legit |= {(p["tenant"], p["public_key"]) for p in people
                  if self.router.people.is_legit(p)}
        now = time.time()
        for entry in issued:
            details = entry.get("details") or {}
            key = details.get("public_key", "") if isinstance(details, dict) else ""
            expires = details.get("expires") if isinstance(details, dict) else None
            if isinstance(expires, int | float) and expires < now:
                continue  # expired anyway: a revocation would only grow the account JWT
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
    """A PocketBase timestamp (UTC) as epoch seconds (timegm: no local time, no DST)."""
    try:
        return calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S"))
    except ValueError:
        return int(time.time())
