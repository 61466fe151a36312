"""The bridge signs JWTs for a sidecar's own key (no seed in PocketBase), with the fixed
`router` role whatever a tenant admin writes into the row; a replaced key is revoked."""

from __future__ import annotations

import asyncio
import secrets

import nats
import pytest

from cairn_common import natsjwt, nkey
from cairn_common.natsauth import service_inbox
from tests.live import account_ready, connect, eventually, new_tenant, uid


@pytest.fixture
async def sidecar(bridge, admin):
    name, password = uid("cairn-router"), secrets.token_urlsafe(16)
    row = await admin.create("sidecars", {"name": name, "kind": "router", "password": password,
                                          "passwordConfirm": password})
    yield row
    try:
        await admin.delete("sidecars", row["id"])
    except Exception:  # already deleted by the test
        pass


async def _issued(admin, tenant, name, key):
    row = await admin.first("nats_users", f'tenant = "{tenant["id"]}" && name = "{name}"')
    if row and row.get("jwt") and natsjwt.decode(row["jwt"])["sub"] == key:
        return row
    return None


async def test_sidecar_key_gets_a_router_jwt_in_every_tenant(sidecar, admin, nats_env):
    a = await account_ready(admin, await new_tenant(admin))
    user = nkey.create("user")
    key = user.public_key.decode()
    await admin.update("sidecars", sidecar["id"], {"nats_public_key": key})
    b = await account_ready(admin, await new_tenant(admin))  # a tenant created afterwards
    name = sidecar["name"]
    for tenant in (a, b):
        row = await eventually(lambda t=tenant: _issued(admin, t, name, key), 10)
        assert row["seed"] == "" and row["creds"] == ""  # the seed never left the sidecar
        claims = natsjwt.decode(row["jwt"])["nats"]
        assert "alerts.>" in claims["pub"]["allow"] and ">" not in claims["pub"]["allow"]
        assert claims["sub"]["allow"] == ["agents.>", "alerts.>", f"_INBOX_svc_{name}.>"]
        assert claims["tags"] == ["role:router"]

    # a tenant admin's edit of the row's role changes nothing the JWT says
    row = await _issued(admin, a, name, key)
    await admin.update("nats_users", row["id"], {"role": "service"})
    await asyncio.sleep(0)
    errors: list[Exception] = []
    nc = await connect(nats_env.url, row["jwt"], user.seed.decode(), errors,
                       inbox_prefix=service_inbox(name))
    try:
        await nc.publish("agents.x.cmd.exec", b"{}")  # the router role cannot command
        await nc.flush()
        await eventually(lambda: _violation(errors), 5)
        after = await admin.get("nats_users", row["id"])
        assert natsjwt.decode(after["jwt"])["nats"]["pub"] == claims["pub"]
    finally:
        await nc.close()


async def _violation(errors):
    return [e for e in errors if "permissions violation" in str(e).lower()] or None


async def test_replaced_sidecar_key_is_revoked(sidecar, admin, nats_env):
    tenant = await account_ready(admin, await new_tenant(admin))
    old = nkey.create("user")
    await admin.update("sidecars", sidecar["id"], {"nats_public_key": old.public_key.decode()})
    row = await eventually(
        lambda: _issued(admin, tenant, sidecar["name"], old.public_key.decode()), 10)
    closed = asyncio.Event()

    async def on_closed():
        closed.set()

    nc = await connect(nats_env.url, row["jwt"], old.seed.decode(), closed_cb=on_closed)
    new = nkey.create("user")
    await admin.update("sidecars", sidecar["id"], {"nats_public_key": new.public_key.decode()})
    fresh = await eventually(
        lambda: _issued(admin, tenant, sidecar["name"], new.public_key.decode()), 10)
    await asyncio.wait_for(closed.wait(), 5)  # the old key's connection was cut
    assert nc.is_closed
    nc2 = await connect(nats_env.url, fresh["jwt"], new.seed.decode())  # the new one works
    await nc2.close()
    with pytest.raises((nats.errors.Error, OSError)):
        await connect(nats_env.url, row["jwt"], old.seed.decode())

    await admin.delete("sidecars", sidecar["id"])  # deleted: its rows and JWTs go

    async def gone():
        return await admin.first("nats_users", f'name = "{sidecar["name"]}"') is None

    await eventually(gone, 30)

    async def refused():  # the rows' delete events revoke the key (they may trail)
        try:
            nc = await connect(nats_env.url, fresh["jwt"], new.seed.decode())
        except (nats.errors.Error, OSError):
            return True
        await nc.close()
        return False

    await eventually(refused, 30, "the deleted sidecar's key is revoked")
