"""The bridge signs JWTs for a sidecar's own key (no seed in PocketBase), with the fixed
`router` role whatever a tenant admin writes into the row; a replaced key is revoked."""

from __future__ import annotations

import asyncio
import secrets

import nats
import pytest

from cairn_common import natsjwt, nkey
from cairn_common.natsauth import service_inbox
from tests.live import ROLLOUT_WAIT, account_ready, connect, eventually, new_tenant, uid


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
        row = await eventually(lambda t=tenant: _issued(admin, t, name, key), ROLLOUT_WAIT)
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
        lambda: _issued(admin, tenant, sidecar["name"], old.public_key.decode()), ROLLOUT_WAIT)
    closed = asyncio.Event()

    async def on_closed():
        closed.set()

    nc = await connect(nats_env.url, row["jwt"], old.seed.decode(), closed_cb=on_closed)
    new = nkey.create("user")
    await admin.update("sidecars", sidecar["id"], {"nats_public_key": new.public_key.decode()})
    fresh = await eventually(
        lambda: _issued(admin, tenant, sidecar["name"], new.public_key.decode()), ROLLOUT_WAIT)
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


async def test_sidecar_deleted_while_its_rows_are_issued_leaves_none(sidecar, admin):
    """Deleting a sidecar right after its key arrived: the tenants' lanes may still be
    creating its rows. None may survive (a survivor would hold a live JWT)."""
    tenants = [await new_tenant(admin) for _ in range(12)]
    for tenant in tenants:
        await account_ready(admin, tenant)
    key = nkey.create("user").public_key.decode()
    await admin.update("sidecars", sidecar["id"], {"nats_public_key": key})
    await admin.delete("sidecars", sidecar["id"])

    async def gone():
        return await admin.first("nats_users", f'name = "{sidecar["name"]}"') is None

    await eventually(gone, 30, "every row of the deleted sidecar is gone")
    assert await admin.first("nats_users", f'tenant = "{tenants[-1]["id"]}"') is not None


async def test_a_pass_listed_before_a_sidecar_delete_does_not_bring_it_back(
        bridge, sidecar, admin, monkeypatch):
    """A full pass lists `sidecars`, then the sidecar is deleted (its event handled), then
    the pass goes on with its listing: it must not re-issue the sidecar's rows."""
    tenant = await account_ready(admin, await new_tenant(admin))
    key = nkey.create("user").public_key.decode()
    await admin.update("sidecars", sidecar["id"], {"nats_public_key": key})
    await eventually(lambda: _issued(admin, tenant, sidecar["name"], key),  # control
                     ROLLOUT_WAIT)
    b = bridge.bridge
    pb, real_list = b.reconciler.pb, b.reconciler.pb.list

    async def list_then_delete(collection, *args, **kwargs):
        rows = await real_list(collection, *args, **kwargs)
        if collection == "sidecars" and any(r["id"] == sidecar["id"] for r in rows):
            monkeypatch.setattr(pb, "list", real_list)
            await admin.delete("sidecars", sidecar["id"])
            await eventually(lambda: _delete_handled(b, admin, sidecar), 10,
                             "delete event handled")
        return rows

    monkeypatch.setattr(pb, "list", list_then_delete)
    await b.reconciler.run()
    assert b.identities.sidecars.role_of(sidecar["name"]) is None
    assert await admin.first("nats_users", f'name = "{sidecar["name"]}"') is None


async def _delete_handled(b, admin, sidecar) -> bool:
    return (b.freshness.deleted("sidecars", sidecar["id"])
            and not b.lanes.busy(f"sidecars:{sidecar['id']}")
            and await admin.first("nats_users", f'name = "{sidecar["name"]}"') is None)
