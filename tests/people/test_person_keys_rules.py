"""Who may register a key for which membership (person_keys' API rules), with controls."""

from __future__ import annotations

import pytest

from cairn_common import nkey
from cairn_common.pocketbase import PocketBaseError
from tests.live import account_ready, eventually, new_tenant
from tests.people.world import Person, as_person, log_in, new_person, register


@pytest.fixture(scope="module")
async def tenant(bridge, admin):
    """One tenant per module (every test makes its own people): the session's router
    follows every tenant there is, and each one more slows its start."""
    return await account_ready(admin, await new_tenant(admin))


async def _refused(coro) -> PocketBaseError:
    with pytest.raises(PocketBaseError) as refused:
        await coro
    assert refused.value.status in (400, 403, 404), refused.value
    return refused.value


async def test_own_membership_registers(tenant, admin, pb_env):
    person = await new_person(admin, tenant, "viewer")
    row = await register(pb_env.url, person)  # control for every refusal below
    assert row["user"] == person.user["id"]


@pytest.mark.parametrize("field,value", [("jwt", "eyJ.fake.jwt"), ("role", "owner"),
                                         ("jwt_expires", "2099-01-01 00:00:00.000Z"),
                                         ("error", "")])
async def test_a_person_cannot_set_what_the_bridge_writes(field, value, tenant, admin, pb_env):
    person = await new_person(admin, tenant, "viewer")
    await _refused(register(pb_env.url, person, **{field: value}))


async def test_not_for_another_persons_membership(tenant, admin, pb_env):
    victim = await new_person(admin, tenant, "owner")
    mallory = await new_person(admin, tenant, "viewer")
    forged = Person(mallory.user, mallory.password, victim.membership)
    await _refused(register(pb_env.url, forged))
    as_victim = Person(mallory.user, mallory.password, mallory.membership)
    async with await as_person(pb_env.url, mallory) as pb:
        await _refused(pb.create("person_keys", {
            "user": victim.user["id"], "membership": victim.membership["id"],
            "tenant": tenant["id"], "public_key": nkey.create("user").public_key.decode()}))
    assert (await register(pb_env.url, as_victim))["membership"] == mallory.membership["id"]


async def test_not_naming_another_tenant(tenant, admin, pb_env):
    other = await account_ready(admin, await new_tenant(admin))
    person = await new_person(admin, tenant, "owner")
    await new_person(admin, other, "viewer")
    async with await as_person(pb_env.url, person) as pb:
        await _refused(pb.create("person_keys", {
            "user": person.user["id"], "membership": person.membership["id"],
            "tenant": other["id"], "public_key": nkey.create("user").public_key.decode()}))


async def test_rows_are_private_and_never_edited_by_people(tenant, admin, pb_env):
    alice = await new_person(admin, tenant, "owner")
    bob = await new_person(admin, tenant, "owner")
    login = await log_in(pb_env.url, admin, alice)
    async with await as_person(pb_env.url, bob) as pb:
        assert await pb.list("person_keys") == []
        await _refused(pb.get("person_keys", login.row["id"]))
        await _refused(pb.delete("person_keys", login.row["id"]))
    async with await as_person(pb_env.url, alice) as pb:
        mine = await pb.list("person_keys")
        assert [r["id"] for r in mine] == [login.row["id"]]  # control: her own row
        await _refused(pb.update("person_keys", login.row["id"],
                                 {"public_key": nkey.create("user").public_key.decode()}))


async def test_a_bad_key_is_refused_with_its_field(tenant, admin, pb_env):
    person = await new_person(admin, tenant, "viewer")
    account_key = nkey.create("account").public_key.decode()
    refused = await _refused(register(pb_env.url, person,
                                      public_key=account_key))
    assert "public_key" in str(refused)


async def test_too_many_logins_are_refused_in_words(tenant, admin, pb_env):
    from pb_hooks_bridge.people import MAX_KEYS_PER_MEMBERSHIP
    person = await new_person(admin, tenant, "viewer")
    for _ in range(MAX_KEYS_PER_MEMBERSHIP):
        await log_in(pb_env.url, admin, person)
    row = await register(pb_env.url, person)

    async def answered():
        current = await admin.get("person_keys", row["id"])
        return current if current.get("error") or current.get("jwt") else None

    current = await eventually(answered, 10, "the bridge's answer")
    assert not current["jwt"] and "log out elsewhere" in current["error"]


async def test_a_colleagues_key_cannot_be_registered_again(tenant, admin, pb_env, nats_env):
    """Keys are public (audit_log shows them): registering one under another membership and
    deleting that row would revoke its owner's session."""
    from tests.people.world import on_bus
    alice = await new_person(admin, tenant, "operator")
    mallory = await new_person(admin, tenant, "viewer")
    login = await log_in(pb_env.url, admin, alice)
    await _refused(register(pb_env.url, mallory, login.key))
    nc, closed = await on_bus(nats_env.url, alice, login)
    await nc.flush(timeout=2)  # control: alice's session is untouched
    assert not closed.is_set()
    await nc.close()


async def test_a_key_with_a_bad_checksum_gets_no_jwt(tenant, admin, pb_env):
    person = await new_person(admin, tenant, "viewer")
    good = nkey.create("user").public_key.decode()
    bad = good[:-1] + ("A" if good[-1] != "A" else "B")
    row = await register(pb_env.url, person, public_key=bad)

    async def answered():
        current = await admin.get("person_keys", row["id"])
        return current if current.get("error") or current.get("jwt") else None

    current = await eventually(answered, 10, "the bridge's answer")
    assert not current["jwt"] and current["error"].startswith("public_key:")


async def test_revocations_outlive_person_jwts(bridge):
    """The ledger and the revocation pruning span the longer of the two JWT lifetimes."""
    cfg = bridge.config
    assert bridge.bridge.reconciler.ttl == max(cfg.user_jwt_ttl, cfg.person_jwt_ttl)
    assert cfg.person_jwt_ttl > cfg.user_jwt_ttl  # the suite's setting makes this matter
