"""Reconciliation never undoes a newer change, and a realtime reconnect catches up only on
what changed (pb_hooks_bridge/reconcile.py, freshness.py, pb_hooks/updates.pb.js)."""

from __future__ import annotations

import asyncio
import calendar
import os
import random
import sqlite3
import time

import nats
import pytest

from cairn_common import natsjwt, nkey
from cairn_common.pocketbase import PocketBase, pb_date
from pb_hooks_bridge.reconcile import Summary, _epoch
from tests.live import (
    DEVICE_PASSWORD,
    account_ready,
    connect,
    enroll,
    eventually,
    new_device,
    new_tenant,
)

ROUNDS = 30


async def _write_key(pb_url: str, device: dict, public_key: str) -> None:
    async with PocketBase(pb_url) as as_device:
        await as_device.auth_with_password("devices", device["login"], DEVICE_PASSWORD)
        await as_device.update("devices", device["id"], {"nats_public_key": public_key})


def _out_of_band_key(pb_env, device_id: str, public_key: str) -> None:
    """Change a row without any realtime event (as a restore or a lost event would): only
    a reconciliation pass can notice it."""
    with sqlite3.connect(pb_env.layout.pb_dir / "data.db", timeout=10) as db:
        db.execute("UPDATE devices SET nats_public_key = ?, nats_jwt = '', "
                   "nats_jwt_expires = '', updated = ? WHERE id = ?",
                   (public_key, pb_date(time.time()), device_id))


async def _quiet(bridge, *keys: str) -> None:
    """No pass running and nothing queued in these records' lanes."""
    b = bridge.bridge

    async def idle() -> bool:
        return not b.reconciler.lock.locked() and not any(b.lanes.busy(k) for k in keys)

    await eventually(idle, 20, "bridge idle")


async def _refused(nats_env, jwt: str, seed: str) -> None:
    errors: list[Exception] = []
    with pytest.raises(nats.errors.Error):
        await connect(nats_env.url, jwt, seed, errors=errors, max_reconnect_attempts=0)
    assert any("authorization" in str(e).lower() or "revoked" in str(e).lower()
               for e in errors), errors


async def _issued_iats(admin, code: str, key: str, ttl: int) -> list[int]:
    rows = await admin.list("audit_log", filter=f'action = "user.issued" && '
                                                f'target = "devices/{code}"')
    return [int(r["details"]["expires"]) - ttl for r in rows
            if r["details"].get("public_key") == key and r["details"].get("expires")]


async def test_disable_and_deactivation_during_a_pass_are_never_reverted(
        bridge, admin, pb_env, nats_env):
    """Each round lists the rows first, as a pass does, then lets a disable and a tenant
    deactivation land at a random moment while the pass's per-row steps run on that (by
    then stale) listing. Without lanes and freshness the tenant is re-activated in about a
    third of the rounds."""
    b = bridge.bridge
    ttl = b.config.user_jwt_ttl
    home = await account_ready(admin, await new_tenant(admin))
    other = await account_ready(admin, await new_tenant(admin))
    victim = await enroll(pb_env.url, admin, await new_device(admin, home))
    control = await enroll(pb_env.url, admin, await new_device(admin, home))
    v_id, v_code = victim.device["id"], victim.device["code"]
    v_key = victim.user.public_key.decode()
    home_key, other_key = home["nats_account_public_key"], other["nats_account_public_key"]
    keys = (f"devices:{v_id}", f"devices:{control.device['id']}", f"tenants:{other['id']}")
    rng = random.Random(11)
    await b.reconciler.run()  # a whole pass once, with the rows above in it
    for round_ in range(ROUNDS):
        # a fresh grant for the victim; the other tenant active again
        await admin.update("devices", v_id, {"status": "pending"})
        row = await eventually(lambda: _granted(admin, v_id), 10, f"round {round_}: re-issued")
        await admin.update("tenants", other["id"], {"active": True})
        await eventually(lambda: _server_active(b, other_key), 10, "other tenant active")
        await _quiet(bridge, *keys)
        # the control device's key changes without an event: only the pass can issue it
        c_user = nkey.create("user")
        await asyncio.to_thread(_out_of_band_key, pb_env, control.device["id"],
                                c_user.public_key.decode())
        tenants = [await admin.get("tenants", t["id"]) for t in (home, other)]
        devices = await admin.list("devices", filter=f'tenant = "{home["id"]}"')
        summary = Summary()

        await asyncio.gather(
            _pass(b, tenants, devices, summary, rng.uniform(0, 0.1)),
            _change(admin, v_id, other["id"], rng.uniform(0, 0.1)))
        await _quiet(bridge, *keys)
        await asyncio.sleep(0.2)  # anything about to flip back has flipped by now
        await _quiet(bridge, *keys)

        got = await admin.get("devices", v_id)
        assert got["status"] == "disabled" and got["nats_jwt"] == "", (round_, got)
        revocations = natsjwt.decode(await b.pusher.lookup(home_key))["nats"]["revocations"]
        await eventually(lambda: _flushed(b), 10, "audit rows written")
        for iat in await _issued_iats(admin, v_code, v_key, ttl):
            assert revocations.get(v_key, 0) >= iat, f"round {round_}: a JWT outlives the disable"
        await _refused(nats_env, row["nats_jwt"], victim.seed)
        tenant = await admin.get("tenants", other["id"])
        assert tenant["active"] is False, round_
        assert not await _server_active(b, other_key), f"round {round_}: tenant re-activated"
        assert b.accounts.get(other["id"]).active is False, round_
        # positive control: the pass did issue the control device its new key's JWT
        c_row = await admin.get("devices", control.device["id"])
        assert c_row["status"] == "active", (round_, c_row)
        assert natsjwt.decode(c_row["nats_jwt"])["sub"] == c_user.public_key.decode(), round_
        assert summary.counts["device.issued"] >= 1, (round_, summary.line())
        nc = await connect(nats_env.url, c_row["nats_jwt"], c_user.seed.decode())
        await nc.close()


async def _pass(b, tenants: list, devices: list, summary: Summary, delay: float) -> None:
    """The per-row steps of a pass, on listings made before it (as a pass's are)."""
    await asyncio.sleep(delay)
    async with b.reconciler.lock:
        await b.reconciler.rows("tenants", tenants, summary)
        await b.reconciler.rows("devices", devices, summary)


async def _change(admin, device_id: str, tenant_id: str, delay: float) -> None:
    await asyncio.sleep(delay)
    await asyncio.gather(admin.update("devices", device_id, {"status": "disabled"}),
                         admin.update("tenants", tenant_id, {"active": False}))


async def _flushed(bridge_obj) -> bool:
    return not bridge_obj.audit.queue


async def _granted(admin, device_id: str) -> dict | None:
    row = await admin.get("devices", device_id)
    return row if row["status"] == "active" and row["nats_jwt"] else None


async def _server_active(bridge_obj, account_key: str) -> bool:
    token = await bridge_obj.pusher.lookup(account_key)
    return bool(token) and natsjwt.decode(token)["nats"]["limits"].get("conn") != 0


async def _seen(bridge_obj, row: dict) -> bool:
    return bridge_obj.freshness.newest.get("devices", "") >= row["updated"]


def _reader_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "realtime-reader"
            and not t.done()]


async def test_realtime_reconnect_catches_up_only_on_what_changed(bridge, admin, pb_env,
                                                                  nats_env):
    """Changes made while the stream is down (no event will ever come for them) are caught
    up on reconnect, from a listing of recent rows only; a disable in the gap sticks."""
    b = bridge.bridge
    tenant = await account_ready(admin, await new_tenant(admin))
    victim = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    moved = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    answering = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    responder = await _responder(nats_env, answering)
    for _ in range(3):
        await new_device(admin, tenant)
    b.reconciler.margin = 0.5  # (60 s in production) so that the rows above are "old"
    try:
        await asyncio.sleep(1.5)
        touched = await admin.update("devices", answering.device["id"], {"name": "answering"})
        await eventually(lambda: _seen(b, touched), 5, "the newest change seen")
        await _quiet(bridge)
        before = b.reconciler.last
        total = len(await admin.list("devices", fields="id"))
        for task in _reader_tasks():
            task.cancel()  # the stream drops; the follower reconnects after a backoff
        new_key = nkey.create("user")
        await _write_key(pb_env.url, moved.device, new_key.public_key.decode())
        await admin.update("devices", victim.device["id"], {"status": "disabled"})
        command = await admin.create("commands", {
            "tenant": tenant["id"], "device": answering.device["id"], "command": "ping",
            "payload": {}})

        async def caught_up():
            last = b.reconciler.last
            return last if last is not before and last.kind == "catch-up" else None

        summary = await eventually(caught_up, 15, "catch-up after the reconnect")
        listed = sum(n for k, n in summary.counts.items() if k.startswith("device."))
        assert 2 <= listed < total, (listed, total, summary.line())  # recent rows only
        row = await eventually(lambda: _granted(admin, moved.device["id"]), 10,
                               "the key written in the gap issued")
        assert natsjwt.decode(row["nats_jwt"])["sub"] == new_key.public_key.decode()
        nc = await connect(nats_env.url, row["nats_jwt"], new_key.seed.decode())
        await nc.close()
        got = await admin.get("devices", victim.device["id"])
        assert got["status"] == "disabled" and got["nats_jwt"] == ""
        await _refused(nats_env, victim.jwt, victim.seed)

        async def ran():
            got = await admin.get("commands", command["id"])
            return got if got["status"] == "succeeded" else None

        await eventually(ran, 15, "the command created in the gap ran")
    finally:
        b.reconciler.margin = 60.0
        await responder.close()


async def _responder(nats_env, enrolled):
    """A device that answers every command with a pong."""
    from cairn_common.natsauth import device_inbox

    nc = await connect(nats_env.url, enrolled.jwt, enrolled.seed,
                       inbox_prefix=device_inbox(enrolled.device["code"]))

    async def answer(msg):
        await msg.respond(b'{"status": "pong"}')

    await nc.subscribe(f"agents.{enrolled.device['code']}.cmd.>", cb=answer)
    await nc.flush()
    return nc


def test_epoch_is_utc_whatever_the_local_zone():
    """PocketBase stamps are UTC; under a DST zone mktime - timezone was an hour off."""
    saved = os.environ.get("TZ")
    try:
        for zone in ("Europe/Berlin", "America/New_York", "UTC"):
            os.environ["TZ"] = zone
            time.tzset()
            stamp = "2024-07-01 12:00:00.000Z"  # summer: DST in both zones
            assert _epoch(stamp) == calendar.timegm((2024, 7, 1, 12, 0, 0)) == 1719835200
            assert _epoch("2024-01-15 08:30:00.123Z") == 1705307400
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()
