"""Follow PocketBase realtime events and route each to its handler, in order per record.

After every (re)connect the stream is subscribed first and reconciliation runs next, so
nothing that changed while the bridge was away is lost; events that arrive during the
reconciliation queue up and are applied after it (handlers are idempotent).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from cairn_common.pocketbase import PocketBase, RealtimeEvent, follow_realtime
from pb_hooks_bridge import metrics
from pb_hooks_bridge.dispatch import CommandDispatcher
from pb_hooks_bridge.errors import BridgeError
from pb_hooks_bridge.identities import Identities
from pb_hooks_bridge.lanes import Lanes
from pb_hooks_bridge.permissions import RoleError, validate_role
from pb_hooks_bridge.roles import RoleBook
from pb_hooks_bridge.tenants import Tenants

log = logging.getLogger(__name__)

TOPICS = ["tenants/*", "devices/*", "nats_users/*", "nats_roles/*", "commands/*",
          "sidecars/*"]


class EventRouter:
    def __init__(self, pb: PocketBase, tenants: Tenants, identities: Identities,
                 roles: RoleBook, lanes: Lanes, commands: CommandDispatcher) -> None:
        self.pb = pb
        self.commands = commands
        self.tenants = tenants
        self.identities = identities
        self.roles = roles
        self.lanes = lanes

    def submit(self, event: RealtimeEvent) -> None:
        record = event.record
        if event.collection == "commands":
            if event.action == "create":  # later updates are the bridge's own writes
                metrics.EVENTS.labels("commands", "create").inc()
                self.commands.submit(record["id"], record.get("device", ""))
            return
        self.lanes.submit(f"{event.collection}:{record.get('id')}",
                          lambda: self.handle(event))

    async def handle(self, event: RealtimeEvent) -> None:
        record, deleted = event.record, event.action == "delete"
        metrics.EVENTS.labels(event.collection, event.action).inc()
        if event.collection == "tenants":
            await self.tenants.sync(record, deleted=deleted)
        elif event.collection == "devices":
            await self.device(record, deleted)
        elif event.collection == "nats_users":
            await self.service_user(record, deleted)
        elif event.collection == "nats_roles":
            await self.role(record, deleted)
        elif event.collection == "sidecars":
            await self.sidecar(record, deleted)
        _observe_lag(record)

    async def device(self, record: dict[str, Any], deleted: bool) -> None:
        account = await self.tenants.account_for(record.get("tenant", ""))
        if account is None:
            return  # its tenant is gone; the tenant's deletion revoked everything
        await self.identities.sync_device(account, record, deleted=deleted)

    async def service_user(self, record: dict[str, Any], deleted: bool) -> None:
        account = await self.tenants.account_for(record.get("tenant", ""))
        if account is None:
            return
        await self.identities.sync_service_user(account, record, deleted=deleted)
        if not deleted:
            self.tenants.remember_creds(account.tenant_id, record)

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
            return
        before = book.put(record)
        if before is not None and before.get("nats_public_key") == record.get(
                "nats_public_key") and before.get("kind") == record.get("kind"):
            return  # nothing the JWTs depend on changed
        for account in [a for a in self.tenants.accounts.by_tenant.values() if a.active]:
            self.lanes.submit(f"tenant-users:{account.tenant_id}",
                              lambda a=account: self.tenants.ensure_service_users(a))

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
            self.lanes.submit(f"devices:{row['id']}", lambda r=row: self.device(r, False))
        for row in users:
            self.lanes.submit(f"nats_users:{row['id']}",
                              lambda r=row: self.service_user(r, False))


def _observe_lag(record: dict[str, Any]) -> None:
    updated = record.get("updated")
    if not updated:
        return
    try:
        stamp = datetime.fromisoformat(updated.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return
    metrics.EVENT_LAG.observe(max(0.0, time.time() - stamp))


async def follow(pb: PocketBase, router: EventRouter,
                 on_connect: Callable[[], Awaitable[object]],
                 stopping: asyncio.Event) -> None:
    """The shared follow loop, with the bridge's metrics and its reconcile errors."""

    def state(up: bool) -> None:
        metrics.CONNECTED.set(1 if up else 0)

    await follow_realtime(pb, TOPICS, router.submit, on_connect, stopping,
                          on_state=state, retry_on=(BridgeError,))
