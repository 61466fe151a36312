"""A disable sticks (pb_hooks/updates.pb.js): PocketBase's read-modify-write updates lost
one of two concurrent changes to a device row in 11 of 40 tries, so a compromised device
writing its own key in a loop, or a presence write, could undo an admin's disable."""

from __future__ import annotations

import asyncio

import nats
import pytest

from cairn_common.pocketbase import PocketBase, PocketBaseError
from tests.live import (
    DEVICE_PASSWORD,
    account_ready,
    connect,
    enroll,
    eventually,
    new_device,
    new_tenant,
)

PAIRS = 25


@pytest.fixture
async def tenant(bridge, admin):
    return await account_ready(admin, await new_tenant(admin))


async def test_concurrent_writes_to_a_device_lose_nothing(tenant, admin, pb_env):
    async with PocketBase(pb_env.url) as other:
        await other.auth_superuser(pb_env.admin_email, pb_env.admin_password)
        for _ in range(PAIRS):
            device = await new_device(admin, tenant, status="pending")
            await asyncio.gather(
                admin.update("devices", device["id"], {"status": "disabled"}),
                other.update("devices", device["id"], {"online": True,
                                                       "last_seen": "2026-01-01 00:00:00Z"}),
            )
            row = await admin.get("devices", device["id"])
            assert row["status"] == "disabled", "a presence write undid a disable"
            assert row["online"] is True, "a disable undid a presence write"


async def test_a_device_writing_its_key_in_a_loop_cannot_resist_a_disable(tenant, admin,
                                                                           pb_env, nats_env):
    enrolled = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    device = enrolled.device
    key = enrolled.user.public_key.decode()
    stop, going = asyncio.Event(), asyncio.Event()
    writes = 0
    as_device = PocketBase(pb_env.url)
    await as_device.auth_with_password("devices", device["login"], DEVICE_PASSWORD)

    async def spam():
        nonlocal writes
        while not stop.is_set():
            try:
                await as_device.update("devices", device["id"],
                                       {"nats_public_key": key, "hostname": f"h{writes}"})
            except PocketBaseError:
                return  # refused once disabled: what should happen
            writes += 1
            if writes >= 3:
                going.set()

    task = asyncio.create_task(spam())
    try:
        await asyncio.wait_for(going.wait(), 10)  # the device's own writes work (control)
        await admin.update("devices", device["id"], {"status": "disabled"})
        await asyncio.wait_for(task, 10)  # its next write is refused, ending the loop
    finally:
        stop.set()
        await task
        await as_device.close()
    row = await admin.get("devices", device["id"])
    assert row["status"] == "disabled"

    async def refused():  # the bridge revokes the key (the event may trail the write)
        try:
            nc = await connect(nats_env.url, enrolled.jwt, enrolled.seed)
        except (nats.errors.Error, OSError):
            return True
        await nc.close()
        return False

    await eventually(refused, 10, "the disabled device's key is revoked")

    async def stays_disabled():  # the bridge did not re-issue anything meanwhile
        r = await admin.get("devices", device["id"])
        return r if r["status"] == "disabled" and r["nats_jwt"] == "" else None

    await eventually(stays_disabled, 10)


async def test_no_jwt_is_written_onto_a_disabled_device(tenant, admin):
    device = await new_device(admin, tenant, status="disabled")
    with pytest.raises(PocketBaseError) as refused:
        await admin.update("devices", device["id"], {"nats_jwt": "eyJ.x.y", "status": "active"})
    assert refused.value.status == 400
    assert "is disabled" in str(refused.value) or "is disabled" in str(refused.value.data)
    assert (await admin.get("devices", device["id"]))["status"] == "disabled"
    # controls: re-enabling works, and so does a JWT on an enabled device
    await admin.update("devices", device["id"], {"status": "active"})
    await admin.update("devices", device["id"], {"nats_jwt": "eyJ.x.y"})
    assert (await admin.get("devices", device["id"]))["nats_jwt"] == "eyJ.x.y"
