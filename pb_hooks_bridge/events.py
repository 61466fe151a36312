"""Follow PocketBase realtime events and route each to its handler, in order per record.

After every (re)connect the stream is subscribed first and reconciliation runs next, so
nothing that changed while the bridge was away is lost; events that arrive during the
reconciliation queue up and are applied after it (handlers are idempotent).

Every record is handled in its lane (`<collection>:<id>`), by events and reconciliation
alike (`apply`), from a copy no older than what the bridge has seen of it (freshness.py):
an older copy is re-read first, a deleted record is never brought back. Service users
(few rows, and each run may sign a key) are always re-read under their lane, so two runs
in a row never issue two keys; tenants too, so a stale copy never re-activates one.
Device create/delete events also reset presence's (tenant, code) -> id cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from cairn_common.pocketbase import PocketBase, PocketBaseError, RealtimeEvent, follow_realtime
from pb_hooks_bridge import metrics
from pb_hooks_bridge.accounts import Account
from pb_hooks_bridge.device_changes import DeviceChanges
from pb_hooks_bridge.device_requests import DeviceRequests
from pb_hooks_bridge.dispatch import CommandDispatcher
from pb_hooks_bridge.errors import BridgeError
from pb_hooks_bridge.identities import Identities
from pb_hooks_bridge.lanes import ROLLOUT, Lanes
from pb_hooks_bridge.people import People
from pb_hooks_bridge.permissions import RoleError, validate_role
from pb_hooks_bridge.presence import Presence
from pb_hooks_bridge.roles import RoleBook
from pb_hooks_bridge.tenants import Tenants

log = logging.getLogger(__name__)

TOPICS = ["tenants/*", "devices/*", "nats_users/*", "nats_roles/*", "commands/*",
          "sidecars/*", "person_keys/*", "memberships/*", "users/*"]


# Re-read under their lane whatever the freshness map says: service users (each run may sign
# a key) and tenants (few rows; a step on a stale copy would push the account active again,
# re-issue its service users and requeue its devices after a deactivation whose event still
# waits in the queue, e.g. behind a catch-up).
ALWAYS_REREAD = {"nats_users", "tenants"}


class EventRouter:
    def __init__(self, pb: PocketBase, tenants: Tenants, identities: Identities,
                 roles: RoleBook, lanes: Lanes, commands: CommandDispatcher,
                 presence: Presence | None = None,
                 device_requests: DeviceRequests | None = None,
                 people: People | None = None) -> None:
        self.pb = pb
        self.changes = DeviceChanges()
        self.device_requests = device_requests
        self.commands = commands
        self.tenants = tenants
        self.identities = identities
        self.fresh = identities.freshness
        self.roles = roles
        self.lanes = lanes
        self.presence = presence
        self.people = people or People(pb, identities, 12 * 3600)
        self.people.requeue = self.requeue_person
        tenants.on_reactivated = self.requeue_devices

    def submit(self, event: RealtimeEvent) -> None:
        record = event.record
        if event.collection == "commands":
            if event.action == "create":  # later updates are the bridge's own writes
                metrics.EVENTS.labels("commands", "create").inc()
                self.fresh.saw("commands", record)
                self.fresh.advance("commands", record.get("updated", ""))
                self.commands.submit(record["id"], record.get("device", ""),
                                     record.get("tenant", ""))
            return
        deleted = event.action == "delete"
        if event.collection == "memberships":  # caches only; the rows they touch re-queue
            self.people.membership_changed(record, deleted)
            return
        if event.collection == "users":
            self.people.user_changed(record, deleted)
            return
        self.fresh.saw(event.collection, record, deleted=deleted)  # at arrival: newest known
        if not deleted:  # delivered by the stream: the catch-up watermark may move
            self.fresh.advance(event.collection, record.get("updated", ""))
        if event.collection == "devices":
            if event.action == "update" and self.changes.presence_only(record):
                metrics.EVENTS_SKIPPED.inc()  # e.g. our own last_seen write coming back
                return
            if event.action in ("create", "delete"):
                self._forget_device(record, deleted)
        arrived = time.time()
        updated = _stamp(record)
        if updated is not None:
            metrics.EVENT_STEPS.labels("arrive").observe(max(0.0, arrived - updated))
        self.lanes.submit(f"{event.collection}:{record.get('id')}",
                          lambda: self.handle(event, arrived))

    async def handle(self, event: RealtimeEvent, arrived: float | None = None) -> None:
        started = time.time()
        if arrived is not None:
            metrics.EVENT_STEPS.labels("queue").observe(max(0.0, started - arrived))
        metrics.EVENTS.labels(event.collection, event.action).inc()
        await self.apply(event.collection, event.record, deleted=event.action == "delete")
        metrics.EVENT_STEPS.labels("handle").observe(time.time() - started)
        _observe_lag(event.record)

    async def apply(self, collection: str, record: dict[str, Any], deleted: bool = False,
                    resend: bool = False) -> str:
        """Apply one record; call it in the record's lane. Returns the outcome."""
        if not deleted:
            current = await self.current(collection, record)
            if current is None:
                return "gone"  # deleted meanwhile: its delete event does the rest
            record = current
        if collection == "tenants":
            return await self.tenants.sync(record, deleted=deleted, resend=resend)
        if collection == "devices":
            return await self.device(record, deleted)
        if collection == "nats_users":
            return await self.service_user(record, deleted)
        if collection == "person_keys":
            return await self.person(record, deleted)
        if collection == "nats_roles":
            await self.role(record, deleted)
        elif collection == "sidecars":
            await self.sidecar(record, deleted)
        return "unchanged"

    async def current(self, collection: str, record: dict[str, Any]) -> dict[str, Any] | None:
        """This copy, or the row as stored now when the copy is older than one seen
        already (None when the row is gone)."""
        stale = self.fresh.stale(collection, record)
        if not stale and collection not in ALWAYS_REREAD:
            self.fresh.saw(collection, record)
            return record
        if self.fresh.deleted(collection, record["id"]):
            return None
        if stale:
            metrics.STALE_ROWS.labels(collection).inc()
        try:
            row = await self.pb.get(collection, record["id"])
        except PocketBaseError as exc:
            if exc.status == 404:
                return None
            raise
        self.fresh.saw(collection, row)
        return row

    async def device(self, record: dict[str, Any], deleted: bool) -> str:
        account = await self.tenants.account_for(record.get("tenant", ""))
        if account is None:
            return "unchanged"  # its tenant is gone; the tenant's deletion revoked everything
        outcome = await self.identities.sync_device(account, record, deleted=deleted)
        if not deleted:
            self.changes.remember(record)
        if (not deleted and self.device_requests is not None
                and self.changes.config_changed(record) and record.get("status") == "active"):
            await self.device_requests.hint(account, record.get("code", ""))
        return outcome

    def _forget_device(self, record: dict[str, Any], deleted: bool) -> None:
        """A device row created or deleted: what was cached under its code or id goes."""
        row_id = str(record.get("id") or "")
        if self.presence is not None:
            self.presence.forget(record.get("tenant", ""), record.get("code", ""),
                                 row_id if deleted else "")
        if deleted:
            self.changes.forget(row_id)

    async def service_user(self, record: dict[str, Any], deleted: bool) -> str:
        account = await self.tenants.account_for(record.get("tenant", ""))
        if account is None:
            return "unchanged"
        try:
            outcome = await self.identities.sync_service_user(account, record, deleted=deleted)
        except PocketBaseError as exc:
            if exc.status != 404:
                raise
            return "gone"  # deleted while we wrote to it: its delete event revokes
        if not deleted:
            if outcome == "issued":  # the creds are on the stored row now
                record = await self.current("nats_users", record) or record
            self.tenants.remember_creds(account.tenant_id, record)
        return outcome

    async def person(self, record: dict[str, Any], deleted: bool) -> str:
        account = await self.tenants.account_for(record.get("tenant", ""))
        if account is None:
            return "unchanged"  # its tenant is gone, and with it every key of the account
        return await self.people.sync(account, record, deleted=deleted)

    def requeue_person(self, row: dict[str, Any]) -> None:
        """A membership or user changed: the row as last seen, in its lane (not re-read:
        PocketBase may have cascade-deleted it already, and its key must still go)."""
        async def step() -> str:
            current = self.people.book.keys.get(row["id"])
            if current is None:
                return "gone"  # its delete event came first and revoked it
            return await self.person(current, False)

        self.lanes.submit(f"person_keys:{row['id']}", step)

    def requeue_devices(self, account: Account) -> None:
        """A tenant active again: every device through its own lane (JWTs were cleared),
        and its people's keys (revoked with the account: their rows are marked so)."""
        for row in self.people.book.rows_where("tenant", account.tenant_id):
            self.requeue_person(row)

        async def requeue() -> None:
            rows = await self.pb.list("devices", filter=f'tenant = "{account.tenant_id}"')
            for row in rows:
                self.lanes.submit(f"devices:{row['id']}",
                                  lambda r=row: self.apply("devices", r))

        self.lanes.submit(f"tenant-devices:{account.tenant_id}", requeue)

    async def sidecar(self, record: dict[str, Any], deleted: bool) -> None:
        """A sidecar registered (or replaced) its key: issue it a JWT in every active
        tenant; deleted: its rows go, and with them (row events) its JWTs are revoked."""
        book = self.identities.sidecars
        name = record.get("name", "")
        rows = await self.pb.list("nats_users", filter=f'name = "{name}"') if name else []
        if deleted:
            book.remove(name)
            # revoke first, in every tenant at once (not via each row's delete event: a
            # sidecar has a row in every tenant, and its key must stop working now)
            limit = asyncio.Semaphore(16)

            async def revoke(row: dict[str, Any]) -> None:
                account = self.tenants.accounts.get(row.get("tenant", ""))
                key = row.get("public_key") or ""
                async with limit:
                    if account is not None and key:
                        await self.identities.revoke(account, {key: 0}, "service",
                                                     f"nats_users/{name}", "sidecar deleted")
                    await self.pb.delete("nats_users", row["id"])

            await asyncio.gather(*(revoke(row) for row in rows))
            # a tenant's lane may be issuing this sidecar's row right now (a key change or
            # a new tenant queued before the delete): sweep again behind it, in its lane
            for account in list(self.tenants.accounts.by_tenant.values()):
                self.lanes.submit(f"tenants:{account.tenant_id}",
                                  lambda a=account: self._sweep_sidecar(a, name))
            return
        before = book.put(record)
        if before is not None and before.get("nats_public_key") == record.get(
                "nats_public_key") and before.get("kind") == record.get("kind"):
            return  # nothing the JWTs depend on changed
        for account in [a for a in self.tenants.accounts.by_tenant.values() if a.active]:
            self.lanes.submit(f"tenants:{account.tenant_id}",
                              lambda a=account: self._ensure_user(a, name), pool=ROLLOUT)

    async def _sweep_sidecar(self, account: Account, name: str) -> None:
        if self.identities.sidecars.role_of(name) is not None:
            return  # re-created meanwhile: its rows are wanted again
        row = await self.pb.first(
            "nats_users", f'tenant = "{account.tenant_id}" && name = "{name}"')
        if row is None:
            return
        if row.get("public_key"):
            await self.identities.revoke(account, {row["public_key"]: 0}, "service",
                                         f"nats_users/{name}", "sidecar deleted")
        try:
            await self.pb.delete("nats_users", row["id"])
        except PocketBaseError as exc:
            if exc.status != 404:
                raise

    async def _ensure_user(self, account: Account, name: str) -> None:
        if account.active:  # (in the tenant's lane: a deactivation before us is seen)
            await self.tenants.ensure_service_users(account, only=name)

    async def role(self, record: dict[str, Any], deleted: bool) -> None:
        before = self.roles.remove(record["id"])
        if not deleted:
            try:
                validate_role(record)
            except RoleError as exc:
                metrics.ROW_ERRORS.labels("nats_roles").inc()
                if record.get("error") != str(exc):
                    await self.pb.update("nats_roles", record["id"], {"error": str(exc)})
                if before is not None:
                    self.roles.put(before)  # keep issuing with the last good version
                return
            if record.get("error"):
                await self.pb.update("nats_roles", record["id"], {"error": ""})
            self.roles.put(record)
        await self.reissue_role(record.get("name", ""), record.get("tenant") or "")

    async def reissue_role(self, name: str, tenant_id: str) -> None:
        """Re-check every device and service user holding this role (in scope)."""
        scope = f' && tenant = "{tenant_id}"' if tenant_id else ""
        role_filter = f'(role = "{name}"' + (' || role = ""' if name == "agent" else "") + ")"
        devices = await self.pb.list("devices", filter=role_filter + scope)
        users = await self.pb.list("nats_users", filter=f'role = "{name}"' + scope)
        for row in devices:
            self.lanes.submit(f"devices:{row['id']}", lambda r=row: self.apply("devices", r))
        for row in users:
            self.lanes.submit(f"nats_users:{row['id']}",
                              lambda r=row: self.apply("nats_users", r))


def _stamp(record: dict[str, Any]) -> float | None:
    """The record's `updated` as epoch seconds (None when absent or unreadable)."""
    updated = record.get("updated")
    if not updated or not isinstance(updated, str):
        return None
    try:
        return datetime.fromisoformat(updated.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _observe_lag(record: dict[str, Any]) -> None:
    stamp = _stamp(record)
    if stamp is not None:
        metrics.EVENT_LAG.observe(max(0.0, time.time() - stamp))


async def follow(pb: PocketBase, router: EventRouter,
                 on_connect: Callable[[], Awaitable[object]],
                 stopping: asyncio.Event) -> None:
    """The shared follow loop, with the bridge's metrics and its reconcile errors."""

    def state(up: bool) -> None:
        metrics.CONNECTED.set(1 if up else 0)

    await follow_realtime(pb, TOPICS, router.submit, on_connect, stopping,
                          on_state=state, retry_on=(BridgeError,))
