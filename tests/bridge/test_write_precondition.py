"""The bridge's grants never flip a disabled device back: the precondition header
`X-Cairn-Unless-Status` (pb_hooks/updates.pb.js), sent through batch sub-requests
(pb_hooks_bridge/writer.py), and a stale grant seen as "a newer change won"."""

from __future__ import annotations

import asyncio

import pytest

from cairn_common.pocketbase import PocketBaseError
from pb_hooks_bridge.identities import SUPERSEDED
from pb_hooks_bridge.writer import NOT_IF_DISABLED, BatchWriter, superseded
from tests.live import account_ready, enroll, eventually, new_device, new_tenant


async def test_precondition_refuses_only_the_guarded_write(bridge, admin):
    tenant = await account_ready(admin, await new_tenant(admin))
    off, other, pending = [await new_device(admin, tenant) for _ in range(3)]
    await admin.update("devices", off["id"], {"status": "disabled"})
    writer = BatchWriter(admin)

    with pytest.raises(PocketBaseError) as refused:
        await writer.update("devices", off["id"], {"status": "active"}, headers=NOT_IF_DISABLED)
    assert refused.value.status == 409 and superseded(refused.value)
    assert "disabled now" in str(refused.value)

    # in one batch: the refused write is taken out, the others are written
    results = await asyncio.gather(
        writer.update("devices", other["id"], {"name": "renamed"}),
        writer.update("devices", off["id"], {"status": "active"}, headers=NOT_IF_DISABLED),
        writer.update("devices", pending["id"], {"status": "active"}, headers=NOT_IF_DISABLED),
        return_exceptions=True)
    assert results[0]["name"] == "renamed"
    assert isinstance(results[1], PocketBaseError) and superseded(results[1])
    assert results[2]["status"] == "active"
    assert (await admin.get("devices", off["id"]))["status"] == "disabled"

    # control: without the header the same write goes through (the hook only narrows
    # the writes of callers that ask for it)
    await writer.update("devices", off["id"], {"status": "active"})
    assert (await admin.get("devices", off["id"]))["status"] == "active"


async def test_a_grant_from_a_stale_copy_is_superseded(bridge, admin, pb_env):
    b = bridge.bridge
    tenant = await account_ready(admin, await new_tenant(admin))
    enrolled = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    stale = await admin.get("devices", enrolled.device["id"])  # active, before the disable
    await admin.update("devices", stale["id"], {"status": "disabled"})

    async def cleared() -> bool:
        return (await admin.get("devices", stale["id"]))["nats_jwt"] == ""

    await eventually(cleared, 5, "the disable handled")
    account = b.accounts.get(tenant["id"])
    outcome = await b.identities.sync_device(account, stale)  # the key is revoked: re-sign
    assert outcome == SUPERSEDED
    row = await admin.get("devices", stale["id"])
    assert row["status"] == "disabled" and row["nats_jwt"] == "" and row["error"] == ""
    # control: the same call on the device's current row signs nothing either, and a
    # re-enabled device is issued again
    assert await b.identities.sync_device(account, row) in ("revoked", "unchanged")
    await admin.update("devices", stale["id"], {"status": "pending"})

    async def issued() -> bool:
        got = await admin.get("devices", stale["id"])
        return got["status"] == "active" and bool(got["nats_jwt"])

    await eventually(issued, 5, "re-enabled device issued")
