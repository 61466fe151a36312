"""Devices and service users -> signed user JWTs; disabled, deleted or replaced keys -> revoked.

Every handler derives what should be from the row it is given and repairs the difference,
so the same function serves realtime events and reconciliation, and running it twice is
harmless. Callers run them in the record's lane with a current copy of the row (events.py).
A device write that grants (status `active`, a JWT) carries the precondition "unless
disabled" (pb_hooks/updates.pb.js): if the row was disabled meanwhile, the write is refused,
the outcome is "superseded" (a newer change won, logged at info) and the disable's own event
revokes whatever was signed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from cairn_common import creds, natsjwt, nkey
from cairn_common.natsauth import device_inbox, service_inbox
from cairn_common.pocketbase import PocketBase, PocketBaseError, pb_date
from pb_hooks_bridge import metrics
from pb_hooks_bridge.accounts import Account
from pb_hooks_bridge.audit import AuditWriter
from pb_hooks_bridge.freshness import Freshness
from pb_hooks_bridge.permissions import Permissions, RoleError, confine_to_device
from pb_hooks_bridge.pusher import Pusher
from pb_hooks_bridge.roles import RoleBook
from pb_hooks_bridge.sidecars import SidecarBook
from pb_hooks_bridge.writer import NOT_IF_DISABLED, BatchWriter, superseded

log = logging.getLogger(__name__)

DEFAULT_DEVICE_ROLE = "agent"
BRIDGE_USER = "cairn-bridge"
BRIDGE_ROLE = "service"
ROLE_TAG = "role:"  # the role a JWT was signed with rides in its tags, to audit changes
SUPERSEDED = "superseded"  # outcome: a newer change to the row refused our write

# called with (nats_users row id, tenant id, JWT expiry or None when it has none any more,
# JWT iat or None when unknown)
ExpiryWatch = Callable[[str, str, int | None, int | None], None]


def renewal_window(ttl: int, claims: dict[str, Any]) -> float:
    """Seconds before `exp` from which a JWT is renewed: half its lifetime, the longer of
    the configured ttl and its own (exp - iat), so a JWT issued under a longer ttl (the
    operator lowered it since) is renewed at its own half-life, not just before expiry."""
    exp, iat = claims.get("exp"), claims.get("iat")
    try:
        own = int(exp) - int(iat) if exp and iat else 0
    except (TypeError, ValueError):
        own = 0
    return max(ttl, own) / 2


class Identities:
    def __init__(self, pb: PocketBase, pusher: Pusher, roles: RoleBook, audit: AuditWriter,
                 ttl: int, sidecars: SidecarBook | None = None,
                 freshness: Freshness | None = None) -> None:
        self.pb = pb
        self.freshness = freshness or Freshness()
        self.writer = BatchWriter(pb, on_written=self.freshness.saw)
        self.watch_expiry: ExpiryWatch | None = None  # the service-user renewal schedule
        self.pusher = pusher
        self.roles = roles
        self.audit = audit
        self.ttl = ttl
        self.sidecars = sidecars or SidecarBook()

    # -- shared steps -----------------------------------------------------------------

    async def revoke(self, account: Account, keys: dict[str, int], kind: str, target: str,
                     reason: str) -> bool:
        """Revoke each key's JWTs issued up to the given iat (0: any known one) and push.

        True when anything changed; a key already revoked at or after that iat is skipped.
        """
        now = int(time.time())
        fresh = sorted(k for k, iat in keys.items() if k and nkey.public_kind(k) == "user"
                       and (k not in account.revocations or account.revocations[k] < iat))
        if not fresh:
            return False
        for key in fresh:
            account.revocations[key] = now
        await self.pusher.push(account)
        for key in fresh:
            metrics.REVOKED.labels(kind).inc()
            self.audit.record("user.revoked", account.tenant_id, target,
                              {"public_key": key, "kind": kind, "reason": reason})
        log.info("revoked", extra={"tenant": account.slug, "target": target, "keys": fresh,
                                   "reason": reason})
        return True

    async def sign(self, account: Account, public_key: str, name: str, perms: Permissions,
                   ttl: int | None, role: str = "",
                   expires_at: int | None = None) -> tuple[str, int | None]:
        """A user JWT whose iat is after any revocation of this key (revoked means iat <= ts);
        it expires `ttl` after its iat, or at `expires_at` when given."""
        revoked_at = account.revocations.get(public_key, 0)
        wait = revoked_at + 1 - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        iat = int(time.time())
        expires = expires_at or (iat + ttl if ttl else None)
        claims = natsjwt.user_claims(
            public_key, name, issuer_account=account.public_key,
            pub_allow=perms.pub_allow, pub_deny=perms.pub_deny,
            sub_allow=perms.sub_allow, sub_deny=perms.sub_deny,
            allow_responses=perms.allow_responses, expires=expires,
            tags=[ROLE_TAG + role] if role else None,
        )
        claims["iat"] = iat
        return natsjwt.encode(claims, account.signing), expires

    def current_grant(self, account: Account, token: str) -> dict[str, Any] | None:
        """Claims of a JWT we issued in this account and that is still valid, else None."""
        if not token:
            return None
        try:
            claims = natsjwt.decode(token)
        except natsjwt.JwtError:
            return None
        if claims.get("iss") != account.signing_public_key:
            return None
        if claims.get("iat", 0) <= account.revocations.get(claims.get("sub", ""), -1):
            return None
        return claims

    def needs_new_jwt(self, claims: dict[str, Any] | None, public_key: str,
                      perms: Permissions, role: str = "") -> str | None:
        """Why a fresh JWT is needed, or None when the current one is good."""
        if claims is None:
            return "no valid JWT"
        if claims.get("sub") != public_key:
            return "key changed"
        exp = claims.get("exp")
        if exp and exp - time.time() < renewal_window(self.ttl, claims):
            return "renewal"
        nats = claims.get("nats", {})
        wanted = natsjwt.user_claims(
            public_key, "", pub_allow=perms.pub_allow, pub_deny=perms.pub_deny,
            sub_allow=perms.sub_allow, sub_deny=perms.sub_deny,
            allow_responses=perms.allow_responses,
        )["nats"]
        for key in ("pub", "sub", "resp"):
            if nats.get(key) != wanted.get(key):
                return "permissions changed"
        if role and granted_role(claims) != role:
            return "role changed"
        return None

    async def set_error(self, collection: str, row: dict[str, Any], message: str,
                        tenant_id: str) -> None:
        metrics.ROW_ERRORS.labels(collection).inc()
        if row.get("error") != message:
            await self.writer.update(collection, row["id"], {"error": message})
            self.audit.record("identity.error", tenant_id, f"{collection}/{row['id']}",
                              {"error": message})
        log.warning("row skipped", extra={"collection": collection, "id": row["id"],
                                          "error": message})

    # -- devices ----------------------------------------------------------------------

    async def sync_device(self, account: Account, device: dict[str, Any],
                          deleted: bool = False) -> str:
        target = f"devices/{device.get('code') or device['id']}"
        key = device.get("nats_public_key") or ""
        grant = self.current_grant(account, device.get("nats_jwt") or "")
        granted_key = grant.get("sub", "") if grant else ""
        granted_iat = int(grant.get("iat", 0)) if grant else 0
        status = device.get("status") or "pending"

        if deleted or status == "disabled" or not account.active:
            reason = "deleted" if deleted else ("disabled" if status == "disabled"
                                                else "tenant inactive")
            changed = await self.revoke(account, _keys(key, granted_key, granted_iat), "device",
                                        target, reason)
            if not deleted and device.get("nats_jwt"):
                await self.writer.update("devices", device["id"],
                                     {"nats_jwt": "", "nats_jwt_expires": ""})
            return "revoked" if changed else "unchanged"
        if not key:
            return "unchanged"  # pending: the agent has not enrolled yet
        role = device.get("role") or DEFAULT_DEVICE_ROLE
        try:
            nkey.check_public(key, "user")
        except nkey.NkeyError as exc:
            await self.set_error("devices", device, f"nats_public_key: {exc}", account.tenant_id)
            return "error"
        try:
            inbox = device_inbox(device["code"])
            perms = self.roles.permissions(account.tenant_id, role, device["code"],
                                           account.slug, inbox)
            perms = confine_to_device(perms, device["code"], inbox)
        except RoleError as exc:
            # a JWT already issued keeps its (narrower) permissions; nothing wider is signed
            await self.set_error("devices", device, f"role {role!r}: {exc}", account.tenant_id)
            return "error"
        if grant is not None and granted_role(grant) not in ("", role):
            self.audit.record("device.role_changed", account.tenant_id, target,
                              {"from": granted_role(grant), "to": role})
        if granted_key and granted_key != key:
            await self.revoke(account, {granted_key: granted_iat}, "device", target,
                              "key replaced")
        why = self.needs_new_jwt(grant, key, perms, role)
        if why is None:
            if status != "active" or device.get("error"):
                if not await self._grant(device, {"status": "active", "error": ""}):
                    return SUPERSEDED
            return "unchanged"
        token, expires = await self.sign(account, key, device["code"], perms, self.ttl, role)
        grant = {"nats_jwt": token, "nats_jwt_expires": pb_date(expires) if expires else "",
                 "status": "active", "error": ""}
        if not await self._grant(device, grant):
            return SUPERSEDED  # the JWT never left this process
        device.update(grant)  # the caller's copy shows what is stored now (renewal answers)
        metrics.ISSUED.labels("device").inc()
        self.audit.record("user.issued", account.tenant_id, target,
                          {"public_key": key, "kind": "device", "reason": why, "role": role,
                           "expires": expires})
        return "issued"

    async def _grant(self, device: dict[str, Any], patch: dict[str, Any]) -> bool:
        """Write a grant unless the device is disabled by now; False when it was."""
        try:
            await self.writer.update("devices", device["id"], patch, headers=NOT_IF_DISABLED)
        except PocketBaseError as exc:
            if not superseded(exc):
                raise
            metrics.SUPERSEDED.labels("devices").inc()
            log.info("grant skipped: the device changed meanwhile (a newer change won)",
                     extra={"device": device.get("code") or device["id"], "error": str(exc)})
            return False
        return True

    # -- service users ----------------------------------------------------------------

    async def sync_service_user(self, account: Account, row: dict[str, Any],
                                deleted: bool = False) -> str:
        target = f"nats_users/{row.get('name') or row['id']}"
        grant = self.current_grant(account, row.get("jwt") or "")
        keys = _keys(row.get("public_key") or "", grant.get("sub", "") if grant else "",
                     int(grant.get("iat", 0)) if grant else 0)
        if deleted or not row.get("active") or not account.active:
            reason = "deleted" if deleted else ("inactive" if not row.get("active")
                                                else "tenant inactive")
            self._watch(row, account, None)
            changed = await self.revoke(account, keys, "service", target, reason)
            if not deleted and row.get("jwt"):
                await self.writer.update("nats_users", row["id"], {"jwt": "", "creds": ""})
            return "revoked" if changed else "unchanged"
        own = self.own_role(row["name"])  # Cairn's own users: fixed, global roles
        role = own or row.get("role") or ""
        try:
            perms = self.roles.permissions(account.tenant_id, role, row["name"], account.slug,
                                           service_inbox(row["name"]),
                                           global_only=own is not None)
        except RoleError as exc:
            await self.set_error("nats_users", row, f"role: {exc}", account.tenant_id)
            return "error"
        sidecar_key = self.sidecars.key_of(row["name"])
        if sidecar_key is not None:
            return await self._sync_sidecar_user(account, row, grant, sidecar_key, perms, role)
        seed = row.get("seed") or ""
        try:
            user = nkey.from_seed(seed, "user") if seed else nkey.create("user")
        except nkey.NkeyError:
            user = nkey.create("user")
        public_key = user.public_key.decode()
        why = self.needs_new_jwt(grant, public_key, perms, role)
        if why is None and row.get("creds"):
            self._watch(row, account, grant)
            if row.get("error"):
                await self.writer.update("nats_users", row["id"], {"error": ""})
            return "unchanged"
        token, expires = await self.sign(account, public_key, row["name"], perms, self.ttl,
                                         role)
        seed_text = user.seed.decode()
        await self.writer.update("nats_users", row["id"], {
            "public_key": public_key, "jwt": token, "seed": seed_text,
            "creds": creds.render(token, seed_text), "error": "",
        })
        self._watch(row, account, {"exp": expires})
        metrics.ISSUED.labels("service").inc()
        self.audit.record("user.issued", account.tenant_id, target,
                          {"public_key": public_key, "kind": "service",
                           "reason": why or "no creds", "expires": expires})
        return "issued"

    def _watch(self, row: dict[str, Any], account: Account,
               grant: dict[str, Any] | None) -> None:
        if self.watch_expiry is not None:
            exp = grant.get("exp") if grant else None
            iat = grant.get("iat") if grant else None
            self.watch_expiry(row["id"], account.tenant_id, int(exp) if exp else None,
                              int(iat) if exp and iat else None)

    def own_role(self, name: str) -> str | None:
        """The fixed role of one of Cairn's own users, or None for a tenant's service user."""
        if name == BRIDGE_USER:
            return BRIDGE_ROLE
        return self.sidecars.role_of(name)

    async def _sync_sidecar_user(self, account: Account, row: dict[str, Any],
                                 grant: dict[str, Any] | None, public_key: str,
                                 perms: Permissions, role: str) -> str:
        """A sidecar made its own key: only its public key is here, and only a JWT goes out
        (no seed, no creds: the sidecar holds its seed and builds its creds itself)."""
        target = f"nats_users/{row['name']}"
        granted_key = grant.get("sub", "") if grant else ""
        if granted_key and granted_key != public_key:
            await self.revoke(account, {granted_key: int(grant.get("iat", 0)) if grant else 0},
                              "service", target, "key replaced")
        if not public_key:
            return "unchanged"  # the sidecar has not registered its key yet
        why = self.needs_new_jwt(grant, public_key, perms, role)
        if why is None:
            self._watch(row, account, grant)
            if row.get("error") or row.get("public_key") != public_key:
                await self.writer.update("nats_users", row["id"],
                                         {"public_key": public_key, "error": ""})
            return "unchanged"
        token, expires = await self.sign(account, public_key, row["name"], perms, self.ttl,
                                         role)
        await self.writer.update("nats_users", row["id"], {
            "public_key": public_key, "jwt": token, "seed": "", "creds": "", "error": "",
            "role": role,
        })
        self._watch(row, account, {"exp": expires})
        metrics.ISSUED.labels("service").inc()
        self.audit.record("user.issued", account.tenant_id, target,
                          {"public_key": public_key, "kind": "sidecar", "reason": why,
                           "expires": expires})
        return "issued"


def granted_role(claims: dict[str, Any]) -> str:
    """The role a JWT we issued was signed with ("" for JWTs from before role tags)."""
    for tag in claims.get("nats", {}).get("tags") or []:
        if isinstance(tag, str) and tag.startswith(ROLE_TAG):
            return tag[len(ROLE_TAG):]
    return ""


def _keys(key: str, granted_key: str, granted_iat: int) -> dict[str, int]:
    """Keys to revoke with the iat each revocation must cover."""
    keys = {key: 0} if key else {}
    if granted_key:
        keys[granted_key] = max(keys.get(granted_key, 0), granted_iat)
    return keys


