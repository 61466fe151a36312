"""Tenants and devices refused at once with the reason under the field, for superusers and
tenant admins (pb_hooks/devices.pb.js, pb_hooks/lib/record_checks.js), and enrollment that
fails fast with its reason (written to devices.error too). Each refusal has its control:
the valid form from the same person succeeds.
"""

from __future__ import annotations

import pytest

from agent.credentials import register_key
from agent.errors import EnrollmentError
from cairn_common import nkey
from cairn_common.pocketbase import PocketBaseError
from tests.live import DEVICE_PASSWORD, account_ready, new_device, new_member, new_tenant, uid


@pytest.fixture(scope="module")
async def place(bridge, admin, pb_env):
    tenant = await account_ready(admin, await new_tenant(admin))
    tenant_admin, _ = await new_member(admin, pb_env.url, tenant, "admin")
    yield {"tenant": tenant, "clients": {"superuser": admin, "admin": tenant_admin}}
    await tenant_admin.close()


async def _refused(make) -> PocketBaseError:
    with pytest.raises(PocketBaseError) as info:
        await make
    assert info.value.status == 400, info.value
    return info.value


def _said(error: PocketBaseError, field: str) -> str:
    return str(error.data.get(field, {}).get("message", "")).lower()


async def test_a_bad_slug_says_the_pattern_and_a_good_one_passes(admin):
    error = await _refused(admin.create("tenants", {"name": "Acme", "slug": "Acme Corp",
                                                    "active": True}))
    assert "must match ^[a-z0-9-]+$" in _said(error, "slug")
    made = await admin.create("tenants", {"name": "Acme", "slug": uid("acme")})
    assert made["active"] is True, "a tenant is active unless created inactive"
    made = await admin.create("tenants", {"name": "Acme", "slug": uid("acme"), "active": False})
    assert made["active"] is False


async def test_every_mistake_in_limits_is_listed(admin):
    bad = {"bogus": 1, "max_connections": "lots", "jetstream_storage": 0}
    error = await _refused(admin.create("tenants", {"name": "x", "slug": uid("lim"),
                                                    "limits": bad}))
    said = _said(error, "limits")
    for words in ("unknown key 'bogus'", "limits.max_connections must be an integer, got 'lots'",
                  "limits.jetstream_storage must not be 0"):
        assert words in said, said
    tenant = await admin.create("tenants", {"name": "x", "slug": uid("lim"),
                                            "limits": {"max_connections": 10}})
    error = await _refused(admin.update("tenants", tenant["id"], {"limits": {"max_data": -9}}))
    assert "limits.max_data must be -1 (unlimited) or >= 0" in _said(error, "limits")


@pytest.mark.parametrize("actor", ["superuser", "admin"])
async def test_a_bad_device_code_says_the_pattern(place, actor):
    client = place["clients"][actor]
    body = {"tenant": place["tenant"]["id"], "password": DEVICE_PASSWORD,
            "passwordConfirm": DEVICE_PASSWORD}
    error = await _refused(client.create("devices", {**body, "code": "Web 01"}))
    assert "must match ^[a-z0-9-]{3,64}$" in _said(error, "code")
    assert (await client.create("devices", {**body, "code": uid("web")}))["id"]


@pytest.mark.parametrize("actor", ["superuser", "admin"])
@pytest.mark.parametrize(("role", "words"), [
    ("no-such-role", "does not exist for this tenant"),
    ("service", "is for services, not devices"),
    ("router", "is for services, not devices"),
])
async def test_a_device_role_must_exist_and_be_for_devices(place, actor, role, words):
    client = place["clients"][actor]
    body = {"tenant": place["tenant"]["id"], "password": DEVICE_PASSWORD,
            "passwordConfirm": DEVICE_PASSWORD}
    error = await _refused(client.create("devices", {**body, "code": uid("d"), "role": role}))
    assert words in _said(error, "role")
    device = await client.create("devices", {**body, "code": uid("d"), "role": "agent"})
    error = await _refused(client.update("devices", device["id"], {"role": role}))
    assert words in _said(error, "role")
    assert (await client.update("devices", device["id"], {"role": ""}))["role"] == ""


async def test_a_disabled_device_fails_to_enroll_at_once_saying_why(place, admin, pb_env):
    device = await new_device(admin, place["tenant"], status="disabled")
    key = nkey.create("user").public_key.decode()
    with pytest.raises(EnrollmentError) as info:
        await register_key(pb_env.url, device["login"], DEVICE_PASSWORD, key, timeout=5)
    assert f"device {device['login']} is disabled" in str(info.value).lower()
    assert "is disabled" in (await admin.get("devices", device["id"]))["error"]
    await admin.update("devices", device["id"], {"status": "pending", "error": ""})
    issued = await register_key(pb_env.url, device["login"], DEVICE_PASSWORD, key, timeout=15)
    assert issued.jwt  # control: enabled again, it enrolls


async def test_a_device_of_an_inactive_tenant_fails_to_enroll_saying_why(bridge, admin, pb_env):
    tenant = await new_tenant(admin, active=False)
    device = await new_device(admin, tenant)
    key = nkey.create("user").public_key.decode()
    with pytest.raises(EnrollmentError) as info:
        await register_key(pb_env.url, device["login"], DEVICE_PASSWORD, key, timeout=5)
    assert f"tenant {tenant['slug']} is inactive" in str(info.value).lower()
    assert "is inactive" in (await admin.get("devices", device["id"]))["error"]
    with pytest.raises(EnrollmentError) as info:  # a wrong secret is told as before
        await register_key(pb_env.url, device["login"], "wrong-secret-123", key, timeout=5)
    assert "wrong tenant, code or secret" in str(info.value)
