"""A person's key stops working when their membership goes, their account is disabled, they
log out or their role changes (the old rights end; the new JWT works)."""

from __future__ import annotations

import asyncio
import time

import httpx
import nats
import pytest

from cairn_common import natsjwt
from cairn_common.pocketbase import PocketBase, PocketBaseError
from tests.live import account_ready, connect, eventually, new_tenant
from tests.people.world import log_in, new_person, on_bus, register


@pytest.fixture(scope="module")
async def tenant(bridge, admin):
    """One tenant per module (every test makes its own people): the session's router
    follows every tenant there is, and each one more slows its start."""
    return await account_ready(admin, await new_tenant(admin))


async def _refused(url: str, jwt: str, seed: str) -> None:
    errors: list[Exception] = []
    with pytest.raises(nats.errors.Error):
        await connect(url, jwt, seed, errors=errors, max_reconnect_attempts=0)
    assert any("authorization" in str(e).lower() for e in errors), errors


async def _dropped(closed: asyncio.Event) -> float:
    started = time.monotonic()
    await asyncio.wait_for(closed.wait(), 5)  # the < 1 s figure is in bench/, not here
    return time.monotonic() - started


async def test_removing_the_membership_drops_the_connection(tenant, admin, pb_env, nats_env):
    person = await new_person(admin, tenant, "operator")
    colleague = await new_person(admin, tenant, "operator")
    login = await log_in(pb_env.url, admin, person)
    kept = await log_in(pb_env.url, admin, colleague)
    _nc, closed = await on_bus(nats_env.url, person, login)
    other_nc, other_closed = await on_bus(nats_env.url, colleague, kept)
    await admin.delete("memberships", person.membership["id"])
    await _dropped(closed)
    await _refused(nats_env.url, login.jwt, login.seed)
    # control: the colleague in the same tenant stays connected and working
    await other_nc.flush(timeout=2)
    assert not other_closed.is_set()
    await other_nc.close()
    audit = await eventually(lambda: admin.list(
        "audit_log", filter=f'action = "user.revoked" && target = "person_keys/{login.row["id"]}"'))
    assert audit[0]["details"]["kind"] == "person"


async def test_disabling_the_user_drops_and_locks_them_out(tenant, admin, pb_env, nats_env):
    person = await new_person(admin, tenant, "admin")
    login = await log_in(pb_env.url, admin, person)
    nc, closed = await on_bus(nats_env.url, person, login)
    await admin.update("users", person.user["id"], {"disabled": True})
    await _dropped(closed)
    await _refused(nats_env.url, login.jwt, login.seed)
    row = await eventually(lambda: _dead(admin, login.row["id"]), 5, "the row marked revoked")
    assert row["error"] == "revoked: user disabled"
    async with PocketBase(pb_env.url) as pb:
        with pytest.raises(PocketBaseError) as refused:
            await pb.auth_with_password("users", person.email, person.password)
    assert refused.value.status == 403 and "disabled" in str(refused.value)
    # control: enabled again, the person logs in and gets a working key (the old stays dead)
    await admin.update("users", person.user["id"], {"disabled": False})
    again = await log_in(pb_env.url, admin, person)
    nc, _ = await on_bus(nats_env.url, person, again)
    await nc.flush(timeout=2)
    await nc.close()
    assert (await admin.get("person_keys", login.row["id"]))["error"].startswith("revoked:")


async def test_a_user_cannot_enable_themselves(tenant, admin, pb_env):
    person = await new_person(admin, tenant, "owner")
    async with PocketBase(pb_env.url) as pb:
        await pb.auth_with_password("users", person.email, person.password)
        await pb.update("users", person.user["id"], {"name": "Renamed"})  # control
        old_token = pb.token
        assert _tenants_seen(pb_env.url, old_token) == [tenant["id"]]  # control
        await admin.update("users", person.user["id"], {"disabled": True})
        assert _tenants_seen(pb_env.url, old_token) == []  # the old session is void
        # a token from before the disable: it can neither re-enable nor register a key
        with pytest.raises(PocketBaseError):
            await pb.update("users", person.user["id"], {"disabled": False})
        with pytest.raises(PocketBaseError):
            await register(pb_env.url, person)
    assert (await admin.get("users", person.user["id"]))["disabled"] is True


async def test_logging_out_revokes_the_key(tenant, admin, pb_env, nats_env):
    person = await new_person(admin, tenant, "viewer")
    login = await log_in(pb_env.url, admin, person)
    other = await log_in(pb_env.url, admin, person)  # a second machine of the same person
    _nc, closed = await on_bus(nats_env.url, person, login)
    other_nc, other_closed = await on_bus(nats_env.url, person, other)
    async with PocketBase(pb_env.url) as pb:
        await pb.auth_with_password("users", person.email, person.password)
        await pb.delete("person_keys", login.row["id"])
    await _dropped(closed)
    await other_nc.flush(timeout=2)  # control: the other login stays
    assert not other_closed.is_set()
    await other_nc.close()


async def test_a_role_change_ends_the_old_rights_and_keeps_the_session_end(tenant, admin,
                                                                           pb_env, nats_env):
    person = await new_person(admin, tenant, "operator")
    login = await log_in(pb_env.url, admin, person)
    first = natsjwt.decode(login.jwt)
    nc, closed = await on_bus(nats_env.url, person, login)
    await admin.update("memberships", person.membership["id"], {"role": "viewer"})
    await _dropped(closed)

    async def reissued():
        row = await admin.get("person_keys", login.row["id"])
        return row if row.get("role") == "viewer" and row.get("jwt") != login.jwt else None

    row = await eventually(reissued, 10, "the JWT re-issued as viewer")
    claims = natsjwt.decode(row["jwt"])
    assert claims["sub"] == first["sub"] and claims["exp"] == first["exp"]
    assert claims["nats"]["pub"] == {"allow": [f"cairn.history.*.{person.user['id']}"]}
    await _refused(nats_env.url, login.jwt, login.seed)
    login.row = row
    nc, _ = await on_bus(nats_env.url, person, login)  # the new JWT works
    await nc.flush(timeout=2)
    await nc.close()


def _tenants_seen(url: str, token: str) -> list[str]:
    resp = httpx.get(f"{url}/api/collections/tenants/records",
                     headers={"Authorization": token}, timeout=5)
    return [r["id"] for r in resp.json().get("items", [])] if resp.status_code == 200 else []


async def _dead(admin, row_id: str):
    row = await admin.get("person_keys", row_id)
    return row if str(row.get("error", "")).startswith("revoked:") and not row["jwt"] else None
