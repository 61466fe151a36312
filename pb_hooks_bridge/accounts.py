"""Tenant accounts: their keys (kept in `nats_accounts`), revocations, and account JWTs.

PocketBase rows are the source of truth; this module keeps a cache of them so the bridge
can sign without a round trip, and rebuilds every JWT from the current state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import nkeys

from cairn_common import natsjwt, nkey
from cairn_common.pocketbase import PocketBase, PocketBaseError
from pb_hooks_bridge import limits as limits_mod

log = logging.getLogger(__name__)

ALL_USERS = "*"  # NATS revocation key that revokes every user JWT issued before its time
# Seconds an account JWT's iat may run ahead of the clock. Every push needs a new, greater
# iat (seconds), so one push per revocation runs ahead of the clock under churn; past this
# lead, pushes are paced to one a second (each still carrying every pending change).
MAX_IAT_LEAD = 600
# JetStream account limits that a replicated stream uses once per replica: the tenant's
# quota (tenants.limits) is what it may keep, so the JWT says quota x replicas
STORAGE_LIMITS = ("disk_storage", "mem_storage")


@dataclass
class Account:
    tenant_id: str
    slug: str
    row_id: str
    identity: nkeys.KeyPair
    signing: nkeys.KeyPair
    revocations: dict[str, int]
    limits: dict[str, Any]
    active: bool
    jwt: str = ""
    last_iat: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    wanted: int = 0  # change generation requested
    pushed: int = 0  # change generation known to be on the server
    server_checked: bool = False  # last_iat includes the server's copy (PocketBase restores)
    telemetry_max_bytes: int = limits_mod.STREAM_KEYS["telemetry_max_bytes"]
    replicas: int = 1  # of the tenant's streams; the JWT's storage limits count every copy

    @property
    def public_key(self) -> str:
        return self.identity.public_key.decode()

    @property
    def signing_public_key(self) -> str:
        return self.signing.public_key.decode()

    def desired_revocations(self) -> dict[str, int]:
        return dict(self.desired_claims()["nats"].get("revocations") or {})

    def desired_claims(self) -> dict[str, Any]:
        revocations = dict(self.revocations)
        nats_limits = dict(self.limits)
        if self.replicas > 1:  # nats-server counts each replica against the account
            for key in STORAGE_LIMITS:
                if nats_limits.get(key, -1) > 0:
                    nats_limits[key] *= self.replicas
        if not self.active:
            nats_limits.update(limits_mod.DISABLED_LIMITS)
            revocations[ALL_USERS] = max(revocations.get(ALL_USERS, 0), int(time.time()))
        return natsjwt.account_claims(
            self.public_key, self.slug, limits=nats_limits,
            signing_keys=[self.signing_public_key], revocations=revocations,
        )

    def same_content(self, token: str) -> bool:
        """Does `token` already say what the current state says (ignoring iat/jti)?"""
        if not token:
            return False
        try:
            stored = natsjwt.decode(token, verify=False)
        except natsjwt.JwtError:
            return False
        desired = self.desired_claims()
        if not self.active:
            # the "*" revocation time is "now"; any time at or after deactivation is fine
            stored_rev = dict(stored.get("nats", {}).get("revocations", {}))
            desired_rev = dict(desired["nats"].get("revocations", {}))
            if ALL_USERS not in stored_rev:
                return False
            stored_rev.pop(ALL_USERS)
            desired_rev.pop(ALL_USERS)
            return stored_rev == desired_rev and _strip(stored, "revocations") == _strip(
                desired, "revocations")
        return _strip(stored) == _strip(desired)

    def next_iat(self) -> int:
        """Strictly greater than the last one: the resolver would accept an older JWT."""
        return max(int(time.time()), self.last_iat + 1)

    def sign(self, operator: nkeys.KeyPair) -> str:
        iat = self.next_iat()
        claims = self.desired_claims()
        claims["iat"] = iat
        token = natsjwt.encode(claims, operator)
        self.jwt, self.last_iat = token, iat
        return token

    def prune_revocations(self, max_age: int) -> int:
        """Drop revocations of keys whose JWTs have expired anyway; keeps the JWT small."""
        horizon = int(time.time()) - max_age
        stale = [k for k, ts in self.revocations.items() if k != ALL_USERS and ts < horizon]
        for key in stale:
            del self.revocations[key]
        return len(stale)


def _strip(claims: dict[str, Any], *drop_nats: str) -> dict[str, Any]:
    nats = {k: v for k, v in claims.get("nats", {}).items() if k not in drop_nats}
    return {"sub": claims.get("sub"), "name": claims.get("name"), "nats": nats}


class AccountStore:
    """tenant id -> Account, loaded from or created in `nats_accounts`."""

    def __init__(self, pb: PocketBase, replicas: int = 1) -> None:
        self.pb = pb
        self.replicas = replicas  # of every tenant's streams (CAIRN_NATS_REPLICAS)
        self.by_tenant: dict[str, Account] = {}
        self._creating: dict[str, asyncio.Lock] = {}

    def get(self, tenant_id: str) -> Account | None:
        return self.by_tenant.get(tenant_id)

    async def ensure(self, tenant: dict[str, Any]) -> Account:
        """The tenant's account, created (keys + row) when it has none. Limits are validated
        here, so a bad `limits` raises LimitsError before anything is written."""
        parsed_limits = limits_mod.account_limits(tenant.get("limits"))
        lock = self._creating.setdefault(tenant["id"], asyncio.Lock())
        async with lock:
            account = self.by_tenant.get(tenant["id"])
            if account is None:
                row = await self.pb.first("nats_accounts", f'tenant = "{tenant["id"]}"')
                if row is None:
                    row = await self._create_row(tenant)
                account = self._from_row(tenant, row, parsed_limits)
                self.by_tenant[tenant["id"]] = account
        account.slug = tenant["slug"]
        account.limits = parsed_limits
        account.telemetry_max_bytes = limits_mod.telemetry_max_bytes(tenant.get("limits"))
        account.replicas = self.replicas
        account.active = bool(tenant.get("active"))
        return account

    async def _create_row(self, tenant: dict[str, Any]) -> dict[str, Any]:
        identity, signing = nkey.create("account"), nkey.create("account")
        try:
            return await self.pb.create("nats_accounts", {
                "tenant": tenant["id"],
                "public_key": identity.public_key.decode(),
                "signing_public_key": signing.public_key.decode(),
                "seed": identity.seed.decode(),
                "signing_seed": signing.seed.decode(),
                "revocations": {},
            })
        except PocketBaseError as exc:
            if exc.status == 400 and "tenant" in exc.data:  # created meanwhile (unique index)
                row = await self.pb.first("nats_accounts", f'tenant = "{tenant["id"]}"')
                if row is not None:
                    return row
            raise

    @staticmethod
    def _from_row(tenant: dict[str, Any], row: dict[str, Any],
                  parsed_limits: dict[str, Any]) -> Account:
        jwt = row.get("jwt") or ""
        last_iat = 0
        if jwt:
            try:
                last_iat = int(natsjwt.decode(jwt, verify=False).get("iat", 0))
            except natsjwt.JwtError:
                log.warning("stored account JWT unreadable", extra={"tenant": tenant["slug"]})
        revocations = row.get("revocations") or {}
        if not isinstance(revocations, dict):
            revocations = {}
        return Account(
            tenant_id=tenant["id"], slug=tenant["slug"], row_id=row["id"],
            identity=nkey.from_seed(row["seed"], "account"),
            signing=nkey.from_seed(row["signing_seed"], "account"),
            revocations={str(k): int(v) for k, v in revocations.items()},
            limits=parsed_limits, active=bool(tenant.get("active")), jwt=jwt, last_iat=last_iat,
        )

    def forget(self, tenant_id: str) -> Account | None:
        return self.by_tenant.pop(tenant_id, None)
