"""Device codes unique per tenant (issue 14): two tenants each have `web-01`, a device logs in
as <tenant slug>/<code> (pb_migrations/1764000008_device_login.js, pb_hooks/devices.pb.js),
and nobody can aim a login at another tenant's device. Every refusal has its control.
"""

from __future__ import annotations

import pytest

from cairn_common.pocketbase import PocketBase, PocketBaseError
from tests.live import DEVICE_PASSWORD, account_ready, new_member, new_tenant, uid

OTHER_SECRET = "other-secret-456"


@pytest.fixture(scope="module")
async def pair(bridge, admin, pb_env):
    """Two tenants, an admin of each, and one code both use."""
    a = await account_ready(admin, await new_tenant(admin))
    b = await account_ready(admin, await new_tenant(admin))
    admin_a, _ = await new_member(admin, pb_env.url, a, "admin")
    admin_b, _ = await new_member(admin, pb_env.url, b, "admin")
    yield {"a": a, "b": b, "admin_a": admin_a, "admin_b": admin_b}
    await admin_a.close()
    await admin_b.close()


def _device(tenant: dict, code: str, secret: str = DEVICE_PASSWORD, **extra) -> dict:
    return {"tenant": tenant["id"], "code": code, "password": secret,
            "passwordConfirm": secret, **extra}


async def _login(pb_url: str, identity: str, secret: str) -> dict:
    async with PocketBase(pb_url) as pb:
        return await pb.auth_with_password("devices", identity, secret)


async def _refused_login(pb_url: str, identity: str, secret: str) -> PocketBaseError:
    with pytest.raises(PocketBaseError) as info:
        await _login(pb_url, identity, secret)
    return info.value


async def test_two_tenants_each_have_the_same_code_and_each_logs_in(pair, pb_env):
    code = uid("web")
    mine = await pair["admin_a"].create("devices", _device(pair["a"], code))
    theirs = await pair["admin_b"].create("devices", _device(pair["b"], code, OTHER_SECRET))
    assert mine["login"] == f"{pair['a']['slug']}/{code}"
    assert theirs["login"] == f"{pair['b']['slug']}/{code}"
    assert (await _login(pb_env.url, mine["login"], DEVICE_PASSWORD))["id"] == mine["id"]
    assert (await _login(pb_env.url, theirs["login"], OTHER_SECRET))["id"] == theirs["id"]
    # a's login with b's secret (and the reverse) opens nothing
    assert (await _refused_login(pb_env.url, mine["login"], OTHER_SECRET)).status == 400
    assert (await _refused_login(pb_env.url, theirs["login"], DEVICE_PASSWORD)).status == 400


async def test_a_bare_code_never_picks_a_tenant_by_secret(pair, pb_env):
    """Only a device made before codes were per tenant may log in by its bare code
    (`bare_code_login`, given by the migration: tests/test_migrations.py). Otherwise another
    tenant could make the same code with a guessed secret and catch a machine enrolled
    without --tenant."""
    code = uid("bare")
    mine = await pair["admin_a"].create("devices", _device(pair["a"], code))
    assert mine["bare_code_login"] is False
    refused = await _refused_login(pb_env.url, code, DEVICE_PASSWORD)
    assert refused.status == 400 and "failed to authenticate" in str(refused).lower()
    # the trap: b makes the same code with the same secret; the bare code still opens nothing
    theirs = await pair["admin_b"].create("devices", _device(pair["b"], code))
    assert (await _refused_login(pb_env.url, code, DEVICE_PASSWORD)).status == 400
    # control: each logs in as <tenant slug>/<code>
    assert (await _login(pb_env.url, mine["login"], DEVICE_PASSWORD))["id"] == mine["id"]
    assert (await _login(pb_env.url, theirs["login"], DEVICE_PASSWORD))["id"] == theirs["id"]


@pytest.mark.parametrize("actor", ["superuser", "admin"])
async def test_nobody_grants_a_bare_code_login_by_hand(pair, admin, pb_env, actor):
    client = admin if actor == "superuser" else pair["admin_a"]
    code = uid("grant")
    made = await client.create("devices", _device(pair["a"], code, bare_code_login=True))
    assert made["bare_code_login"] is False
    updated = await client.update("devices", made["id"], {"bare_code_login": True})
    assert updated["bare_code_login"] is False
    assert (await _refused_login(pb_env.url, code, DEVICE_PASSWORD)).status == 400
    # control: the same update's other fields are written, and the login works
    renamed = await client.update("devices", made["id"], {"bare_code_login": True,
                                                          "name": "Front desk"})
    assert renamed["name"] == "Front desk" and renamed["bare_code_login"] is False
    assert (await _login(pb_env.url, made["login"], DEVICE_PASSWORD))["id"] == made["id"]


@pytest.mark.parametrize("actor", ["superuser", "admin"])
async def test_a_code_twice_in_one_tenant_is_refused_saying_so(pair, admin, actor):
    client = admin if actor == "superuser" else pair["admin_a"]
    code = uid("dup")
    assert (await client.create("devices", _device(pair["a"], code)))["id"]
    with pytest.raises(PocketBaseError) as info:
        await client.create("devices", _device(pair["a"], code))
    said = str(info.value.data.get("code", {}).get("message", "")).lower()
    assert info.value.status == 400
    assert f"'{code}' is already used in tenant {pair['a']['slug']}" in said, info.value
    # control: the other tenant may have it
    other = admin if actor == "superuser" else pair["admin_b"]
    assert (await other.create("devices", _device(pair["b"], code)))["id"]


async def test_renaming_a_device_onto_a_taken_code_is_refused(pair, admin):
    taken, free = uid("tk"), uid("fr")
    await admin.create("devices", _device(pair["a"], taken))
    moving = await admin.create("devices", _device(pair["a"], uid("mv")))
    with pytest.raises(PocketBaseError) as info:
        await admin.update("devices", moving["id"], {"code": taken})
    assert "is already used in tenant" in str(info.value).lower()
    # control: a free code is taken, and the login follows it
    renamed = await admin.update("devices", moving["id"], {"code": free})
    assert renamed["login"] == f"{pair['a']['slug']}/{free}"


async def test_nobody_sets_a_login_by_hand(pair, admin, pb_env):
    """A login aimed at another tenant's device would let a's secret stand in for b's row."""
    code = uid("aim")
    theirs = await admin.create("devices", _device(pair["b"], code, OTHER_SECRET))
    hostile = await pair["admin_a"].create("devices", _device(
        pair["a"], uid("own"), login=theirs["login"]))
    assert hostile["login"].startswith(pair["a"]["slug"] + "/")
    made = await admin.create("devices", _device(pair["a"], uid("su"), login="x/y"))
    assert made["login"] == f"{pair['a']['slug']}/{made['code']}"
    # a device writing its own row cannot change its login either
    async with PocketBase(pb_env.url) as as_device:
        await as_device.auth_with_password("devices", hostile["login"], DEVICE_PASSWORD)
        try:
            await as_device.update("devices", hostile["id"], {"login": theirs["login"]})
        except PocketBaseError as exc:
            assert exc.status in (400, 403, 404), exc
        # control: its own allowed field is written
        await as_device.update("devices", hostile["id"], {"hostname": "box-1"})
    row = await admin.get("devices", hostile["id"])
    assert row["login"] == hostile["login"] and row["hostname"] == "box-1"
    assert (await _login(pb_env.url, theirs["login"], OTHER_SECRET))["id"] == theirs["id"]
    assert (await _refused_login(pb_env.url, theirs["login"], DEVICE_PASSWORD)).status == 400


@pytest.mark.parametrize("actor", ["superuser", "admin"])
async def test_a_slug_cannot_change_while_its_tenant_has_devices(bridge, admin, pb_env, actor):
    tenant = await account_ready(admin, await new_tenant(admin))
    member, _ = await new_member(admin, pb_env.url, tenant, "owner")
    client = admin if actor == "superuser" else member
    try:
        # control: with no device yet, the slug may change
        renamed = await admin.update("tenants", tenant["id"], {"slug": uid("re")})
        device = await admin.create("devices", _device(renamed, uid("d")))
        with pytest.raises(PocketBaseError) as info:
            await client.update("tenants", tenant["id"], {"slug": uid("again")})
        if actor == "superuser":
            said = str(info.value.data.get("slug", {}).get("message", "")).lower()
            assert info.value.status == 400
            assert f"cannot change while tenant {renamed['slug']} has devices" in said
        assert (await admin.get("tenants", tenant["id"]))["slug"] == renamed["slug"]
        # the device still logs in, and the other fields may still change
        assert (await _login(pb_env.url, device["login"], DEVICE_PASSWORD))["id"] == device["id"]
        await admin.update("tenants", tenant["id"], {"slug": renamed["slug"], "name": "Same"})
    finally:
        await member.close()
