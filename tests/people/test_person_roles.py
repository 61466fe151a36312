"""A person's JWT does what their membership role allows, and nothing else (SPEC §13).

Each refusal has its positive control in the same setup: an operator's ping is answered by
the very device a viewer's ping never reaches; a tenant's own person sees the traffic a
person of another tenant does not.
"""

from __future__ import annotations

import asyncio
import json

import nats
import pytest

from cairn_common import natsjwt
from tests.live import account_ready, connect, enroll, eventually, new_device, new_tenant
from tests.people.world import log_in, new_person, on_bus


@pytest.fixture(scope="module")
async def tenant(bridge, admin):
    """One tenant per module (every test makes its own people): the session's router
    follows every tenant there is, and each one more slows its start."""
    return await account_ready(admin, await new_tenant(admin))


@pytest.fixture
async def device(tenant, admin, pb_env, nats_env):
    """An enrolled device that answers pings and can publish its heartbeat."""
    enrolled = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    nc = await connect(nats_env.url, enrolled.jwt, enrolled.seed)
    code = enrolled.device["code"]

    async def pong(msg) -> None:
        await msg.respond(json.dumps({"status": "ok", "pong": True}).encode())

    await nc.subscribe(f"agents.{code}.cmd.ping", cb=pong)
    await nc.flush()
    yield code, nc
    await nc.close()


def _denied(errors: list[Exception], verb: str) -> bool:
    return any("permissions violation" in str(e).lower() and verb in str(e).lower()
               for e in errors)


@pytest.mark.parametrize("role", ["operator", "admin", "owner"])
async def test_a_commanding_role_pings_a_device(role, tenant, device, admin, pb_env, nats_env):
    code, _ = device
    person = await new_person(admin, tenant, role)
    login = await log_in(pb_env.url, admin, person)
    assert login.row["role"] == role
    nc, _ = await on_bus(nats_env.url, person, login)
    reply = await nc.request(f"agents.{code}.cmd.ping", b"{}", timeout=5)
    assert json.loads(reply.data)["pong"] is True
    await nc.close()


async def test_a_viewer_cannot_command_but_reads_heartbeats(tenant, device, admin, pb_env,
                                                            nats_env):
    code, device_nc = device
    viewer = await new_person(admin, tenant, "viewer")
    login = await log_in(pb_env.url, admin, viewer)
    claims = natsjwt.decode(login.jwt)
    # history asks in their own name only
    assert claims["nats"]["pub"] == {"allow": [f"cairn.history.*.{viewer.user['id']}"]}
    errors: list[Exception] = []
    nc, _ = await on_bus(nats_env.url, viewer, login, errors)
    seen: asyncio.Queue = asyncio.Queue()
    await nc.subscribe(f"agents.{code}.heartbeat", cb=seen.put)
    await nc.flush()
    with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
        await nc.request(f"agents.{code}.cmd.ping", b"{}", timeout=1)
    await eventually(lambda: asyncio.sleep(0, _denied(errors, "publish")), 5,
                     "a publish violation for the viewer")
    # control: the same viewer's subscription gets the device's heartbeat
    await device_nc.publish(f"agents.{code}.heartbeat", b'{"ok": true}')
    msg = await asyncio.wait_for(seen.get(), 5)
    assert msg.data == b'{"ok": true}'
    await nc.close()


async def test_a_person_cannot_read_another_persons_replies(tenant, device, admin, pb_env,
                                                            nats_env):
    code, _ = device
    alice = await new_person(admin, tenant, "operator")
    bob = await new_person(admin, tenant, "operator")
    alice_nc, _ = await on_bus(nats_env.url, alice, await log_in(pb_env.url, admin, alice))
    errors: list[Exception] = []
    bob_nc, _ = await on_bus(nats_env.url, bob, await log_in(pb_env.url, admin, bob), errors)
    await bob_nc.subscribe(f"_INBOX_person_{alice.user['id']}.>")
    await bob_nc.subscribe("_INBOX.>")
    await bob_nc.flush()
    await eventually(lambda: asyncio.sleep(0, _denied(errors, "subscription")), 5,
                     "a subscription violation for bob")
    # control: alice's own request still comes back to her
    reply = await alice_nc.request(f"agents.{code}.cmd.ping", b"{}", timeout=5)
    assert json.loads(reply.data)["pong"] is True
    await alice_nc.close()
    await bob_nc.close()


async def test_a_person_of_tenant_a_sees_nothing_of_tenant_b(tenant, device, admin, pb_env,
                                                             nats_env):
    code, device_nc = device
    other = await account_ready(admin, await new_tenant(admin))
    stranger = await new_person(admin, other, "owner")
    insider = await new_person(admin, tenant, "viewer")
    stranger_nc, _ = await on_bus(nats_env.url, stranger,
                                  await log_in(pb_env.url, admin, stranger))
    insider_nc, _ = await on_bus(nats_env.url, insider, await log_in(pb_env.url, admin, insider))
    leaked: asyncio.Queue = asyncio.Queue()
    seen: asyncio.Queue = asyncio.Queue()
    await stranger_nc.subscribe("agents.>", cb=leaked.put)
    await insider_nc.subscribe("agents.*.heartbeat", cb=seen.put)
    await stranger_nc.flush()
    await insider_nc.flush()
    with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
        await stranger_nc.request(f"agents.{code}.cmd.ping", b"{}", timeout=1)
    await device_nc.publish(f"agents.{code}.heartbeat", b"beat")
    assert (await asyncio.wait_for(seen.get(), 5)).data == b"beat"  # control
    await stranger_nc.flush()
    assert leaked.empty()
    await stranger_nc.close()
    await insider_nc.close()


async def test_each_issued_person_jwt_is_an_audit_row(tenant, admin, pb_env):
    person = await new_person(admin, tenant, "operator")
    login = await log_in(pb_env.url, admin, person)
    key = login.key.public_key.decode()
    rows = await eventually(lambda: admin.list(
        "audit_log", filter=f'action = "user.issued" && target = "person_keys/{login.row["id"]}"'),
        5, "the audit row")
    details = rows[0]["details"]
    assert (details["kind"], details["public_key"], details["role"], details["user"]) == (
        "person", key, "operator", person.user["id"])
    claims = natsjwt.decode(login.jwt)
    assert 0 < claims["exp"] - claims["iat"] <= 12 * 3600
