"""Service users: exactly one key each (no orphan for a later pass to revoke), renewed on
their own schedule from their own expiry (pb_hooks_bridge/tenants.py, renewal.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time

import pytest

from cairn_common import creds, natsjwt
from pb_hooks_bridge.config import BridgeConfig, load
from pb_hooks_bridge.errors import BridgeError
from tests.live import BridgeHandle, account_ready, connect, eventually, new_tenant

NAMES = ("cairn-bridge", "cairn-router")


async def _users_issued(admin, tenant_id: str) -> dict[str, dict] | None:
    rows = await admin.list("nats_users", filter=f'tenant = "{tenant_id}" && jwt != ""')
    by_name = {r["name"]: r for r in rows}
    if not all(n in by_name for n in NAMES) or not by_name["cairn-bridge"]["creds"]:
        return None
    return by_name


async def _audit(admin, action: str, tenant_id: str) -> list[dict]:
    return await admin.list("audit_log", filter=f'action = "{action}" && tenant = "{tenant_id}"')


async def _flushed(b) -> bool:
    return not b.audit.queue


async def test_each_service_user_gets_exactly_one_key(bridge, router_identity, admin,
                                                      nats_env):
    b = bridge.bridge
    alone = await new_tenant(admin)
    await account_ready(admin, alone)
    burst = await asyncio.gather(*(new_tenant(admin) for _ in range(20)))
    tenants = [alone, *burst]
    users = {}
    for tenant in tenants:
        users[tenant["id"]] = await eventually(lambda t=tenant: _users_issued(admin, t["id"]),
                                               20, f"service users of {tenant['slug']}")
    await asyncio.sleep(1.0)  # a second issuance, if any, has happened by now
    await eventually(lambda: _flushed(b), 10, "audit rows written")

    async def issued_once() -> None:
        for tenant in tenants:
            issued = await _audit(admin, "user.issued", tenant["id"])
            targets = sorted(r["target"] for r in issued)
            assert targets == [f"nats_users/{n}" for n in NAMES], (tenant["slug"], issued)
            rows = users[tenant["id"]]
            for entry in issued:
                name = entry["target"].split("/", 1)[1]
                assert entry["details"]["public_key"] == rows[name]["public_key"]

    await issued_once()
    await b.reconcile()  # a full pass: nothing to repair, above all no "orphan" to revoke
    await eventually(lambda: _flushed(b), 10, "audit rows written")
    await issued_once()
    for tenant in tenants:
        assert await _audit(admin, "user.revoked", tenant["id"]) == [], tenant["slug"]
        rows = users[tenant["id"]]
        jwt, seed = creds.parse(rows["cairn-bridge"]["creds"])
        nc = await connect(nats_env.url, jwt, seed)  # the key is still accepted
        await nc.close()
        router_row = await admin.get("nats_users", rows["cairn-router"]["id"])
        nc = await connect(nats_env.url, router_row["jwt"], router_identity.seed)
        await nc.close()


@pytest.mark.timeout(300)
async def test_service_users_are_renewed_on_their_own_schedule(bridge, router_identity,
                                                               admin, nats_env):
    """One-minute JWTs: each service user gets a newer JWT before its current one expires,
    again and again, each time exactly once (long before the 10-minute pass)."""
    await bridge.stop()
    own = BridgeHandle(dataclasses.replace(bridge.config, user_jwt_ttl=60))
    try:
        await own.start()
        tenant = await account_ready(admin, await new_tenant(admin))
        first = await eventually(lambda: _users_issued(admin, tenant["id"]), 20,
                                 "service users issued")
        seen: dict[str, list[tuple[str, float]]] = {n: [] for n in NAMES}  # (jwt, first seen)
        for name in NAMES:
            seen[name].append((first[name]["jwt"], time.time()))
        deadline = time.time() + 100
        while time.time() < deadline and min(len(v) for v in seen.values()) < 3:
            rows = await _users_issued(admin, tenant["id"]) or {}
            for name, row in rows.items():
                if name in seen and row["jwt"] != seen[name][-1][0]:
                    seen[name].append((row["jwt"], time.time()))
            await asyncio.sleep(0.5)
        await eventually(lambda: _flushed(own.bridge), 10, "audit rows written")
        issued = await _audit(admin, "user.issued", tenant["id"])
        for name in NAMES:
            jwts = seen[name]
            assert len(jwts) >= 3, (name, len(jwts))  # renewed at least twice
            for (old, _), (new, at) in itertools.pairwise(jwts):
                old_claims, new_claims = natsjwt.decode(old), natsjwt.decode(new)
                assert new_claims["exp"] - new_claims["iat"] == 60
                assert at < old_claims["exp"], f"{name}: renewed only after expiry"
                assert new_claims["sub"] == old_claims["sub"], f"{name}: the key changed"
            mine = [r for r in issued if r["target"] == f"nats_users/{name}"]
            # exactly once per renewal (the newest may have been issued after the loop)
            assert len(jwts) <= len(mine) <= len(jwts) + 1, (name, len(mine), len(jwts))
            expiries = sorted(r["details"]["expires"] for r in mine)
            assert len(set(expiries)) == len(expiries), f"{name}: two JWTs for one renewal"
        assert await _audit(admin, "user.revoked", tenant["id"]) == []
    finally:
        await own.stop()
        await bridge.start()


def test_user_jwt_ttl_minimum_is_named(tmp_path):
    env = {"CAIRN_DATA_DIR": str(tmp_path), "CAIRN_ADMIN_EMAIL": "a@b.c",
           "CAIRN_ADMIN_PASSWORD": "x" * 12}
    with pytest.raises(BridgeError, match="at least 60 seconds"):
        load({**env, "CAIRN_USER_JWT_TTL": "59"})
    assert load({**env, "CAIRN_USER_JWT_TTL": "60"}).user_jwt_ttl == 60
    with pytest.raises(BridgeError, match="at least 60 seconds"):
        BridgeConfig(data_dir=tmp_path, pb_url="", nats_url="nats://127.0.0.1:4222",
                     admin_email="", admin_password="", user_jwt_ttl=30)
