"""Tenants -> accounts: keys, account JWT pushed, streams (streams.py), service users.

A deactivated tenant's account is pushed with zero connections and every user revoked;
a deleted tenant's account is removed from the resolver.

`sync` runs in the tenant's lane (`tenants:<id>`). Cairn's own service users are issued
through each row's own lane (`nats_users:<id>`, entered with `Lanes.nested`) from a copy
of the row read under that lane, so the row's create event, a reconciliation pass and the
tenant's provisioning never issue two keys for one user. `account_for` (from a device's or
a command's lane) only loads and pushes the account and leaves the rest of provisioning to
the tenant's lane: a lane waiting on the tenant's lock could deadlock against a tenant
waiting on a service user's lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import nats
from nats.errors import NoRespondersError
from nats.js.errors import ServiceUnavailableError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from cairn_common.pocketbase import PocketBase, PocketBaseError
from pb_hooks_bridge.accounts import Account, AccountStore
from pb_hooks_bridge.audit import AuditWriter
from pb_hooks_bridge.conn_limits import is_limit_message
from pb_hooks_bridge.identities import BRIDGE_ROLE, BRIDGE_USER, Identities
from pb_hooks_bridge.lanes import Lanes
from pb_hooks_bridge.limits import LimitsError
from pb_hooks_bridge.links import TenantLinks
from pb_hooks_bridge.orphans import delete_streams_as, purge_account_streams
from pb_hooks_bridge.pusher import Pusher, PushError
from pb_hooks_bridge.streams import ensure_streams

log = logging.getLogger(__name__)


class Tenants:
    def __init__(self, pb: PocketBase, accounts: AccountStore, pusher: Pusher,
                 identities: Identities, links: TenantLinks, audit: AuditWriter,
                 telemetry_max_age: int, lanes: Lanes | None = None) -> None:
        self.pb = pb
        self.accounts = accounts
        self.pusher = pusher
        self.identities = identities
        self.links = links
        self.audit = audit
        self.telemetry_max_age = telemetry_max_age
        self.lanes = lanes or Lanes(16)
        # called with the account of a tenant that became active again (its devices lost
        # their JWTs while it was off); set by the event router, which re-queues them
        self.on_reactivated: Callable[[Account], None] | None = None

    async def account_for(self, tenant_id: str) -> Account | None:
        """The tenant's account; loaded and pushed first when this bridge has not seen it
        (the rest of provisioning is queued on the tenant's own lane)."""
        account = self.accounts.get(tenant_id)
        if account is not None:
            return account
        try:
            tenant = await self.pb.get("tenants", tenant_id)
        except PocketBaseError as exc:
            if exc.status == 404:
                return None
            raise
        try:
            account = await self.accounts.ensure(tenant)
        except LimitsError:
            self.lanes.submit(f"tenants:{tenant_id}", lambda: self.sync_current(tenant_id))
            return None  # the tenant's lane writes the error on its row
        await self.pusher.push(account)
        self.lanes.submit(f"tenants:{tenant_id}", lambda: self.sync_current(tenant_id))
        return account

    async def sync_current(self, tenant_id: str) -> str:
        """Sync from a copy of the row read now (in the tenant's lane)."""
        try:
            tenant = await self.pb.get("tenants", tenant_id)
        except PocketBaseError as exc:
            if exc.status == 404:
                return "gone"  # its delete event does the rest
            raise
        self.identities.freshness.saw("tenants", tenant)
        return await self.sync(tenant)

    async def sync(self, tenant: dict[str, Any], deleted: bool = False,
                   resend: bool = False) -> str:
        if deleted:
            return await self._delete(tenant)
        known = self.accounts.get(tenant["id"])
        was_active = known.active if known is not None else True
        try:
            account = await self.accounts.ensure(tenant)
        except LimitsError as exc:
            await self.identities.set_error("tenants", tenant, str(exc), tenant["id"])
            return "error"
        pushed = await self.pusher.push(account, resend=resend)
        if pushed:
            self.audit.record("account.pushed", tenant["id"], f"tenants/{tenant['slug']}",
                              {"public_key": account.public_key, "active": account.active})
        if account.active:
            await self.ensure_service_users(account)
            await self.ensure_stream(account)
            if not was_active and self.on_reactivated is not None:
                self.on_reactivated(account)  # devices handled while it was off lost JWTs
        else:
            await self.links.close(tenant["id"])
        # written last: a tenant showing its account key is fully provisioned
        patch: dict[str, Any] = {}
        if tenant.get("nats_account_public_key") != account.public_key:
            patch["nats_account_public_key"] = account.public_key
        if tenant.get("error") and not is_limit_message(tenant["error"]):
            patch["error"] = ""  # (the connection-limit message is conn_limits.py's own)
        if patch:
            self.identities.freshness.saw("tenants",
                                          await self.pb.update("tenants", tenant["id"], patch))
        return "pushed" if pushed else "unchanged"

    async def _delete(self, tenant: dict[str, Any]) -> str:
        account = self.accounts.forget(tenant["id"])
        public_key = tenant.get("nats_account_public_key") or (
            account.public_key if account else "")
        await self._purge_streams(tenant, public_key, account)
        await self.links.close(tenant["id"])
        if not public_key:
            return "unchanged"
        if account is not None:  # drop live connections before the JWT disappears
            account.active = False
            account.server_checked = False  # a cleanup JWT may have gone out meanwhile
            await self.pusher.push(account)
        await self.pusher.delete([public_key])
        self.audit.record("account.deleted", None, f"tenants/{tenant.get('slug')}",
                          {"public_key": public_key, "tenant_id": tenant["id"]})
        return "deleted"

    async def _purge_streams(self, tenant: dict[str, Any], public_key: str,
                             account: Account | None = None) -> None:
        """Delete the tenant's streams while its account still exists: data on disk of an
        account gone from the resolver would otherwise stay forever."""
        details = {"tenant": tenant.get("slug"), "tenant_id": tenant["id"]}
        nc = self.links.conns.get(tenant["id"])
        try:
            if nc is None or nc.is_closed:
                if public_key:
                    await self.purge_orphan(public_key, details)
                return
            js = nc.jetstream(timeout=2)  # short: the fallback below needs no link
            for info in await js.streams_info():
                await js.delete_stream(info.config.name)
                self.audit.record("stream.deleted", None, f"streams/{info.config.name}",
                                  details)
        except (nats.errors.Error, OSError, TimeoutError, PushError) as exc:
            # e.g. the link's own user was revoked meanwhile (its nats_users row went with
            # the tenant, in another lane): the account is still there, so a short-lived
            # user of its own signing key does it (nothing in the account JWT changes)
            if account is None or not await self._purge_as(account, details):
                log.warning("could not delete the tenant's streams; they stay on disk",
                            extra={**details, "error": str(exc)})

    async def _purge_as(self, account: Account, details: dict[str, Any]) -> bool:
        try:
            names = await delete_streams_as(self.links.nats_url, account.public_key,
                                            account.signing)
        except (nats.errors.Error, OSError, TimeoutError):
            return False
        for name in names:
            self.audit.record("stream.deleted", None, f"streams/{name}", details)
        return True

    async def purge_orphan(self, public_key: str, details: dict[str, Any]) -> None:
        """Streams of an account the bridge has no link into (see orphans.py)."""
        for name in await purge_account_streams(self.pusher, self.links.nats_url,
                                                public_key):
            self.audit.record("stream.deleted", None, f"streams/{name}", details)

    async def ensure_service_users(self, account: Account, only: str = "") -> None:
        """The bridge's own user, and one per registered sidecar (e.g. the router), each
        issued in its row's lane from a copy read there (exactly one key per user).
        `only`: just that sidecar's user (its key changed), so that one sidecar's change
        costs one row per tenant, not every service user of every tenant."""
        scope = f'tenant = "{account.tenant_id}"'
        sidecars = self.identities.sidecars
        if only:
            names = [only] if sidecars.key_of(only) else []
            scope += f' && name = "{only}"'
        else:
            names = [BRIDGE_USER] + [n for n in sidecars.names() if sidecars.key_of(n)]
        if not names:
            return
        rows = await self.pb.list("nats_users", filter=scope)
        by_name = {row["name"]: row for row in rows}
        for name in names:
            row = by_name.get(name)
            if row is None:
                if name != BRIDGE_USER and not sidecars.key_of(name):
                    continue  # the sidecar went (or lost its key) while we worked
                try:
                    row = await self.pb.create("nats_users", {
                        "tenant": account.tenant_id, "name": name,
                        "role": self.identities.own_role(name) or BRIDGE_ROLE, "active": True,
                    })
                except PocketBaseError as exc:  # created concurrently (unique tenant+name)
                    if exc.status != 400:
                        raise
                    row = await self.pb.first(
                        "nats_users", f'tenant = "{account.tenant_id}" && name = "{name}"')
                    if row is None:
                        raise
            await self.lanes.nested(f"nats_users:{row['id']}",
                                    lambda r=row: self.sync_user_current(account, r["id"]))

    async def sync_user_current(self, account: Account, row_id: str) -> str:
        """Sync one service user from a copy of its row read now (call in its lane)."""
        try:
            row = await self.pb.get("nats_users", row_id)
        except PocketBaseError as exc:
            if exc.status != 404:
                raise
            return "gone"  # its delete event revokes
        self.identities.freshness.saw("nats_users", row)
        outcome = await self.identities.sync_service_user(account, row)
        if outcome == "issued":
            row = await self.pb.get("nats_users", row_id)
        self.remember_creds(account.tenant_id, row)
        return outcome

    def remember_creds(self, tenant_id: str, row: dict[str, Any]) -> None:
        if row.get("name") == BRIDGE_USER and row.get("jwt") and row.get("seed"):
            self.links.set_creds(tenant_id, row["jwt"], row["seed"])

    async def ensure_stream(self, account: Account) -> None:
        """Create or update the tenant's streams (streams.py). JetStream for a just-pushed
        account comes up a moment after the push, so "no responders" is retried briefly."""
        async for attempt in AsyncRetrying(
            # a cluster electing a JetStream meta leader (a node died) answers nothing
            retry=retry_if_exception_type((ServiceUnavailableError, NoRespondersError,
                                           nats.errors.TimeoutError)),
            stop=stop_after_delay(20), wait=wait_exponential(multiplier=0.05, max=1),
            reraise=True,
        ):
            with attempt:
                nc = await self.links.get(account.tenant_id, account.slug)
                await ensure_streams(nc.jetstream(timeout=5), account, self.telemetry_max_age,
                                     self.audit, account.replicas)
