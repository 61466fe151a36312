"""Nothing is lost while the bridge, PocketBase or nats-server is away."""

from __future__ import annotations

import asyncio

from cairn_common import natsjwt, nkey
from cairn_common.pocketbase import PocketBase
from tests.live import (
    DEVICE_PASSWORD,
    account_ready,
    connect,
    enroll,
    eventually,
    new_device,
    new_tenant,
)


async def _write_key(pb_url: str, device: dict, public_key: str) -> None:
    async with PocketBase(pb_url) as as_device:
        await as_device.auth_with_password("devices", device["login"], DEVICE_PASSWORD)
        await as_device.update("devices", device["id"], {"nats_public_key": public_key})


async def test_catch_up_after_bridge_downtime(bridge, admin, pb_env, nats_env):
    old_tenant = await account_ready(admin, await new_tenant(admin))
    victim = await enroll(pb_env.url, admin, await new_device(admin, old_tenant))
    deleted = await enroll(pb_env.url, admin, await new_device(admin, old_tenant))
    victim_nc = await connect(nats_env.url, victim.jwt, victim.seed)
    deleted_nc = await connect(nats_env.url, deleted.jwt, deleted.seed)

    await bridge.stop()
    try:
        tenant = await new_tenant(admin)
        devices = [await new_device(admin, tenant) for _ in range(3)]
        keys = [nkey.create("user") for _ in devices]
        for device, key in zip(devices, keys, strict=True):
            await _write_key(pb_env.url, device, key.public_key.decode())
        await admin.update("devices", victim.device["id"], {"status": "disabled"})
        await admin.delete("devices", deleted.device["id"])
        await asyncio.sleep(0.3)
        assert victim_nc.is_connected and deleted_nc.is_connected
    finally:
        await bridge.start()

    await account_ready(admin, tenant)
    for device in devices:
        row = await eventually(lambda d=device: _issued(admin, d["id"]), 10)
        nc = await connect(nats_env.url, row["nats_jwt"],
                           keys[devices.index(device)].seed.decode())
        await nc.close()
    await eventually(lambda: _closed(victim_nc), 5, "disabled device dropped")
    await eventually(lambda: _closed(deleted_nc), 5, "deleted device dropped (audit ledger)")


async def test_accounts_survive_nats_restart(bridge, admin, pb_env, nats_env):
    tenant = await account_ready(admin, await new_tenant(admin))
    enrolled = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    nats_env.restart()
    nc = await connect(nats_env.url, enrolled.jwt, enrolled.seed)
    assert nc.is_connected
    await nc.close()
    # the bridge's own SYS link comes back and keeps working
    device = await new_device(admin, tenant)
    again = await enroll(pb_env.url, admin, device)
    await admin.update("devices", device["id"], {"status": "disabled"})

    async def revoked() -> bool:
        token = await bridge.bridge.pusher.lookup(tenant["nats_account_public_key"])
        return again.user.public_key.decode() in natsjwt.decode(token)["nats"].get(
            "revocations", {})

    await eventually(revoked, 10, "revocation pushed after NATS restart")


async def test_bridge_resumes_after_pocketbase_restart(bridge, admin, pb_env, nats_env):
    pb_env.restart()
    tenant = await new_tenant(admin)  # the admin client re-authenticates as needed
    await account_ready(admin, tenant)
    enrolled = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    nc = await connect(nats_env.url, enrolled.jwt, enrolled.seed)
    await nc.close()


async def _issued(admin, device_id):
    row = await admin.get("devices", device_id)
    return row if row.get("nats_jwt") and row.get("status") == "active" else None


async def _closed(nc):
    return nc.is_closed


async def test_tenants_deleted_while_the_bridge_is_away_leave_no_data_behind(
        bridge, admin, nats_env):
    """On start the bridge finds their accounts orphaned: it deletes their streams (with
    only the operator key: the account seeds went with the rows), then the accounts. One
    of them was deactivated first, so its JWT forbade every connection."""
    active = await account_ready(admin, await new_tenant(admin))
    inactive = await account_ready(admin, await new_tenant(admin))
    keys = [t["nats_account_public_key"] for t in (active, inactive)]
    store = nats_env.layout.nats_store_dir / "jetstream"

    async def streams_on_disk() -> bool:
        return all((store / key / "streams" / "TELEMETRY").exists() for key in keys)

    await eventually(streams_on_disk, 10, "both tenants' TELEMETRY streams on disk")
    await admin.update("tenants", inactive["id"], {"active": False})

    async def deactivated() -> bool:
        token = await bridge.bridge.pusher.lookup(keys[1])
        return natsjwt.decode(token)["nats"]["limits"]["conn"] == 0

    await eventually(deactivated, 10, "deactivation pushed")
    await bridge.stop()
    try:
        for tenant in (active, inactive):
            await admin.delete("tenants", tenant["id"])
    finally:
        await bridge.start()

    async def gone() -> bool:
        listed = await bridge.bridge.pusher.list_accounts()
        return not any(key in listed for key in keys)

    await eventually(gone, 15, "orphan accounts removed from the resolver")
    for key in keys:
        assert not (store / key / "streams" / "TELEMETRY").exists(), key

    async def audited() -> bool:
        rows = await admin.list("audit_log", filter='action = "stream.deleted"')
        return set(keys) <= {r["details"].get("account") for r in rows
                             if r["details"].get("orphan")}

    await eventually(audited, 5, "each purge in the audit log")
