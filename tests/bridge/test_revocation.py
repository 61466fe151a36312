"""Disable, delete, key rotation and deactivation close live connections for good."""

from __future__ import annotations

import asyncio

import nats
import pytest

from cairn_common import natsjwt, nkey
from tests.live import (
    account_ready,
    connect,
    enroll,
    eventually,
    new_device,
    new_tenant,
)


async def _closed_event(nc_kwargs: dict) -> asyncio.Event:
    closed = asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    nc_kwargs["closed_cb"] = on_closed
    return closed


async def _live(nats_env, enrolled):
    kwargs: dict = {}
    closed = await _closed_event(kwargs)
    nc = await connect(nats_env.url, enrolled.jwt, enrolled.seed, **kwargs)
    return nc, closed


async def _refused(nats_env, jwt: str, seed: str) -> None:
    errors: list[Exception] = []
    with pytest.raises(nats.errors.Error):
        await connect(nats_env.url, jwt, seed, errors=errors, max_reconnect_attempts=0)
    assert any("authorization" in str(e).lower() for e in errors), errors


@pytest.fixture
async def tenant(bridge, admin):
    row = await new_tenant(admin)
    return await account_ready(admin, row)


async def test_disable_closes_connection_and_old_creds_are_refused(tenant, admin, pb_env,
                                                                  nats_env):
    enrolled = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    _nc, closed = await _live(nats_env, enrolled)
    await admin.update("devices", enrolled.device["id"], {"status": "disabled"})
    await asyncio.wait_for(closed.wait(), 5)  # latency is measured in bench/, not here
    await _refused(nats_env, enrolled.jwt, enrolled.seed)
    await eventually(lambda: _jwt_cleared(admin, enrolled.device["id"]), 5)
    code = enrolled.device["code"]
    audit = await eventually(lambda: admin.list(
        "audit_log", filter=f'action = "user.revoked" && target = "devices/{code}"'))
    assert audit[0]["details"]["reason"] == "disabled"


async def test_reenable_issues_fresh_jwt_that_works(tenant, admin, pb_env, nats_env):
    enrolled = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    await admin.update("devices", enrolled.device["id"], {"status": "disabled"})
    await eventually(lambda: _jwt_cleared(admin, enrolled.device["id"]))
    await admin.update("devices", enrolled.device["id"], {"status": "pending"})
    row = await eventually(lambda: _active_with_jwt(admin, enrolled.device["id"]), 5)
    assert row["nats_jwt"] != enrolled.jwt
    nc = await connect(nats_env.url, row["nats_jwt"], enrolled.seed)
    await nc.close()
    # disabling again must revoke the new JWT too (its iat is after the first revocation)
    nc, closed = await _live(nats_env, type(enrolled)(row, enrolled.user, row["nats_jwt"]))
    await admin.update("devices", enrolled.device["id"], {"status": "disabled"})
    await asyncio.wait_for(closed.wait(), 5)


async def test_delete_closes_connection(tenant, admin, pb_env, nats_env):
    enrolled = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    _nc, closed = await _live(nats_env, enrolled)
    await admin.delete("devices", enrolled.device["id"])
    await asyncio.wait_for(closed.wait(), 5)
    await _refused(nats_env, enrolled.jwt, enrolled.seed)


async def test_key_rotation_revokes_only_the_old_key(tenant, admin, pb_env, nats_env):
    device = await new_device(admin, tenant)
    other = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    first = await enroll(pb_env.url, admin, device)
    _old_nc, old_closed = await _live(nats_env, first)
    other_nc, other_closed = await _live(nats_env, other)
    second = await enroll(pb_env.url, admin, device, user=nkey.create("user"))
    await asyncio.wait_for(old_closed.wait(), 5)
    new_nc = await connect(nats_env.url, second.jwt, second.seed)
    await asyncio.sleep(0.3)
    assert new_nc.is_connected and other_nc.is_connected and not other_closed.is_set()
    await _refused(nats_env, first.jwt, first.seed)
    await new_nc.close()
    await other_nc.close()


async def test_tenant_deactivation_drops_everyone(bridge, admin, pb_env, nats_env):
    tenant = await account_ready(admin, await new_tenant(admin))
    enrolled = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    nc, closed = await _live(nats_env, enrolled)
    await admin.update("tenants", tenant["id"], {"active": False})
    await asyncio.wait_for(closed.wait(), 5)
    await _refused(nats_env, enrolled.jwt, enrolled.seed)
    await admin.update("tenants", tenant["id"], {"active": True})

    async def reactivated() -> bool:
        token = await bridge.bridge.pusher.lookup(tenant["nats_account_public_key"])
        return "*" not in natsjwt.decode(token)["nats"].get("revocations", {})

    await eventually(reactivated, 5, "account re-enabled on the server")
    row = await eventually(lambda: _active_with_jwt(admin, enrolled.device["id"]), 10)
    nc = await connect(nats_env.url, row["nats_jwt"], enrolled.seed)
    await nc.close()


async def test_tenant_deletion_removes_account(bridge, admin, pb_env, nats_env):
    tenant = await account_ready(admin, await new_tenant(admin))
    account_key = tenant["nats_account_public_key"]
    enrolled = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    _nc, closed = await _live(nats_env, enrolled)
    await admin.delete("tenants", tenant["id"])
    await asyncio.wait_for(closed.wait(), 5)

    async def gone() -> bool:
        return account_key not in await bridge.bridge.pusher.list_accounts()

    await eventually(gone, 15, "account removed from the resolver")
    stream_dir = nats_env.layout.nats_store_dir / "jetstream" / account_key / "streams"

    async def purged() -> bool:
        return not (stream_dir / "TELEMETRY").exists()

    await eventually(purged, 20, "the deleted tenant's stream removed from disk")


async def test_concurrent_changes_never_push_a_stale_jwt(tenant, admin, pb_env, nats_env, bridge):
    """Many revocations racing on one account: the server must end with all of them."""
    devices = [await new_device(admin, tenant) for _ in range(8)]
    enrolled = await asyncio.gather(*(enroll(pb_env.url, admin, d) for d in devices))
    conns = [await _live(nats_env, e) for e in enrolled]
    await asyncio.gather(*(admin.update("devices", e.device["id"], {"status": "disabled"})
                           for e in enrolled))
    await asyncio.wait_for(asyncio.gather(*(closed.wait() for _, closed in conns)), 5)
    server_jwt = await bridge.bridge.pusher.lookup(tenant["nats_account_public_key"])
    revoked = natsjwt.decode(server_jwt)["nats"]["revocations"]
    for e in enrolled:
        assert e.user.public_key.decode() in revoked
    for e in enrolled:
        await _refused(nats_env, e.jwt, e.seed)


async def _jwt_cleared(admin, device_id):
    return (await admin.get("devices", device_id))["nats_jwt"] == ""


async def _active_with_jwt(admin, device_id):
    row = await admin.get("devices", device_id)
    return row if row["status"] == "active" and row["nats_jwt"] else None
