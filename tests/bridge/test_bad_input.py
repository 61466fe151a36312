"""Bad rows get a clear error on the row; nothing is issued; the bridge keeps running."""

from __future__ import annotations

import pytest

from cairn_common import nkey
from cairn_common.pocketbase import PocketBase, PocketBaseError
from pb_hooks_bridge import limits as limits_mod
from tests.live import (
    DEVICE_PASSWORD,
    account_ready,
    enroll,
    eventually,
    new_device,
    new_tenant,
    uid,
)


@pytest.fixture
async def tenant(bridge, admin):
    return await account_ready(admin, await new_tenant(admin))


async def _write_key(pb_url: str, device: dict, value: str) -> None:
    async with PocketBase(pb_url) as as_device:
        await as_device.auth_with_password("devices", device["login"], DEVICE_PASSWORD)
        await as_device.update("devices", device["id"], {"nats_public_key": value})


async def _error(admin, collection, row_id):
    row = await admin.get(collection, row_id)
    return row if row.get("error") else None


@pytest.mark.parametrize(
    ("make_value", "expected"),
    [
        (lambda: nkey.create("user").seed.decode(), "private seed"),
        (lambda: nkey.create("account").public_key.decode(), "got an account key"),
        (lambda: nkey.create("operator").public_key.decode(), "got an operator key"),
        (lambda: "garbage", "56 characters"),
        (lambda: "U" + "A" * 55, "bad encoding or checksum"),
    ],
    ids=["seed", "account-key", "operator-key", "garbage", "bad-checksum"],
)
async def test_bad_public_key_is_reported_on_the_row(tenant, admin, pb_env, make_value,
                                                     expected):
    device = await new_device(admin, tenant)
    await _write_key(pb_env.url, device, make_value())
    row = await eventually(lambda: _error(admin, "devices", device["id"]), 5)
    assert expected in row["error"]
    assert row["nats_jwt"] == "" and row["status"] != "active"


async def test_huge_key_is_refused_by_pocketbase(tenant, admin, pb_env):
    device = await new_device(admin, tenant)
    with pytest.raises(PocketBaseError) as info:
        await _write_key(pb_env.url, device, "U" * 30_000)
    assert info.value.status == 400 and "nats_public_key" in info.value.data


async def test_bridge_keeps_working_after_bad_rows(tenant, admin, pb_env):
    bad = await new_device(admin, tenant)
    await _write_key(pb_env.url, bad, "not-a-key")
    await eventually(lambda: _error(admin, "devices", bad["id"]), 5)
    good = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    assert good.jwt
    # fixing the bad row clears its error and issues
    fixed = await enroll(pb_env.url, admin, bad)
    assert fixed.device["error"] == ""


async def test_role_with_invalid_subject_is_rejected(tenant, admin, pb_env):
    role = await admin.create("nats_roles", {
        "name": uid("role"), "tenant": tenant["id"],
        "publish_allow": ["foo..bar"], "subscribe_allow": ["_INBOX.>"],
    })
    row = await eventually(lambda: _error(admin, "nats_roles", role["id"]), 5)
    assert "empty token" in row["error"] and "foo..bar" in row["error"]
    device = await new_device(admin, tenant, role=role["name"])
    await _write_key(pb_env.url, device, nkey.create("user").public_key.decode())
    row = await eventually(lambda: _error(admin, "devices", device["id"]), 5)
    assert "does not exist" in row["error"] or "foo..bar" in row["error"]
    assert row["nats_jwt"] == ""


async def test_role_change_reissues_holders(tenant, admin, pb_env):
    name = uid("role")
    role = await admin.create("nats_roles", {
        "name": name, "tenant": tenant["id"], "publish_allow": ["agents.{code}.>"],
        "subscribe_allow": ["agents.{code}.cmd.>", "{inbox}.>"], "allow_responses": True,
    })
    device = await new_device(admin, tenant, role=name)
    enrolled = await enroll(pb_env.url, admin, device)
    await admin.update("nats_roles", role["id"], {"publish_allow": ["agents.{code}.telemetry.>"]})

    async def reissued():
        row = await admin.get("devices", device["id"])
        return row if row["nats_jwt"] != enrolled.jwt else None

    row = await eventually(reissued, 5)
    from cairn_common import natsjwt
    claims = natsjwt.decode(row["nats_jwt"])
    assert claims["nats"]["pub"]["allow"] == [f"agents.{device['code']}.telemetry.>"]


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"max_connections": "lots"}, "limits.max_connections must be an integer"),
        ({"bogus": 1}, "unknown key 'bogus'"),
        ({"jetstream_storage": 0}, "must not be 0"),
        ({"max_payload": -5}, "must be -1"),
    ],
)
async def test_bad_limits_are_refused_in_the_bridges_words(bridge, admin, limits, expected):
    """PocketBase refuses them at once (pb_hooks/lib/record_checks.js) with the words the
    bridge would write on the row (limits.py, the same cairn_common/tenant_limits.json)."""
    with pytest.raises(PocketBaseError) as info:
        await new_tenant(admin, limits=limits)
    said = info.value.data["limits"]["message"].lower()  # (PocketBase capitalizes it)
    assert expected in said and expected in "; ".join(limits_mod.problems(limits))
    good = await account_ready(admin, await new_tenant(admin, limits={"max_connections": 50}))
    assert good["nats_account_public_key"]  # control: good limits get an account
