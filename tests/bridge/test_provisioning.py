"""Tenants become accounts; devices become users with their role's permissions."""

from __future__ import annotations

import asyncio
import json

import nats
import pytest

from cairn_common import natsjwt
from tests.live import (
    account_ready,
    connect,
    enroll,
    eventually,
    new_device,
    new_tenant,
)


async def test_tenant_gets_account_stream_and_service_users(bridge, router_identity, admin,
                                                             nats_env):
    tenant = await new_tenant(admin)
    row = await account_ready(admin, tenant)
    public_key = row["nats_account_public_key"]
    account = await admin.first("nats_accounts", f'tenant = "{tenant["id"]}"')
    assert account["public_key"] == public_key
    claims = natsjwt.decode(account["jwt"])
    assert claims["nats"]["limits"]["disk_storage"] != 0, "JetStream must be on"
    async def both():
        rows = await admin.list("nats_users", filter=f'tenant = "{tenant["id"]}" && jwt != ""')
        return rows if {"cairn-bridge", "cairn-router"} <= {u["name"] for u in rows} else None

    users = await eventually(both, 10, "service users issued")
    router = next(u for u in users if u["name"] == "cairn-router")
    assert router["public_key"] == router_identity.public_key  # the router's own key...
    assert router["seed"] == "" and router["creds"] == ""  # ...and no seed in PocketBase
    bridge_user = next(u for u in users if u["name"] == "cairn-bridge")
    nc = await connect(nats_env.url, bridge_user["jwt"], bridge_user["seed"])
    try:
        info = await nc.jetstream().stream_info("TELEMETRY")
        assert info.config.subjects == ["agents.*.telemetry.>"]
        assert info.config.max_age == pytest.approx(7 * 86400)
    finally:
        await nc.close()


async def test_device_enrollment_issues_scoped_jwt(bridge, admin, pb_env, nats_env):
    tenant = await new_tenant(admin)
    await account_ready(admin, tenant)
    device = await new_device(admin, tenant)
    enrolled = await enroll(pb_env.url, admin, device)
    claims = natsjwt.decode(enrolled.jwt)
    code = device["code"]
    assert claims["nats"]["pub"]["allow"] == [f"agents.{code}.>"]
    assert claims["nats"]["sub"]["allow"] == [f"agents.{code}.cmd.>", f"_INBOX_{code}.>"]
    assert claims["exp"] > claims["iat"]
    assert enrolled.device["nats_jwt_expires"]
    seed = enrolled.seed
    for collection in ("devices", "nats_accounts", "audit_log", "nats_users"):
        dump = json.dumps(await admin.list(collection))
        assert seed not in dump, f"the device seed leaked into {collection}"
    nc = await connect(nats_env.url, enrolled.jwt, seed)
    assert nc.is_connected
    await nc.close()


async def test_device_permissions_are_enforced(bridge, admin, pb_env, nats_env):
    tenant = await new_tenant(admin)
    await account_ready(admin, tenant)
    d1 = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    svc = await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{tenant["id"]}" && name = "cairn-bridge" && jwt != ""'))
    code1 = d1.device["code"]
    errors: list[Exception] = []
    device = await connect(nats_env.url, d1.jwt, d1.seed, errors=errors)
    control = await connect(nats_env.url, svc["jwt"], svc["seed"])
    try:
        async def pong(msg):
            await msg.respond(b'{"status":"pong"}')

        await device.subscribe(f"agents.{code1}.cmd.ping", cb=pong)
        await device.flush()
        await asyncio.sleep(0)
        await device.flush()
        reply = await control.request(f"agents.{code1}.cmd.ping", b"{}", timeout=2)
        assert reply.data == b'{"status":"pong"}'

        await device.subscribe("agents.other-dev.cmd.>")
        await device.flush()
        await eventually(lambda: _has(errors, "permissions violation for subscription"),
                         3, "subscribe refused")

        seen = []
        await control.subscribe("agents.other-dev.>", cb=_collect(seen))
        await control.subscribe("alerts.>", cb=_collect(seen))
        await control.flush()
        await device.publish("agents.other-dev.heartbeat", b"x")
        await device.publish("alerts.fake", b"x")
        await device.flush()
        await eventually(lambda: _has(errors, "permissions violation for publish"), 3)
        await asyncio.sleep(0.2)
        assert seen == [], "a device published outside its own subjects"

        js = control.jetstream()
        before = (await js.stream_info("TELEMETRY")).state.messages
        await device.publish(f"agents.{code1}.telemetry.system", b'{"cpu_percent": 1}')
        await device.flush()
        await eventually(lambda: _count(js, before + 1), 3, "telemetry stored")
    finally:
        await device.close()
        await control.close()


async def test_tenants_are_isolated(bridge, admin, pb_env, nats_env):
    a, b = await new_tenant(admin), await new_tenant(admin)
    await account_ready(admin, a)
    await account_ready(admin, b)
    svc_a = await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{a["id"]}" && name = "cairn-bridge" && jwt != ""'))
    svc_b = await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{b["id"]}" && name = "cairn-bridge" && jwt != ""'))
    nca = await connect(nats_env.url, svc_a["jwt"], svc_a["seed"])
    ncb = await connect(nats_env.url, svc_b["jwt"], svc_b["seed"])
    try:
        got_a, got_b = [], []
        await nca.subscribe("agents.d1.cmd.ping", cb=_collect(got_a))
        await ncb.subscribe("agents.d1.cmd.ping", cb=_collect(got_b))
        for nc in (nca, ncb):
            await nc.flush()
            await asyncio.sleep(0)
            await nc.flush()
        await nca.publish("agents.d1.cmd.ping", b"from-a")
        await ncb.publish("agents.d1.cmd.ping", b"from-b")
        await nca.flush()
        await ncb.flush()
        await eventually(lambda: _both(got_a, got_b), 3)
        await asyncio.sleep(0.2)
        assert [m.data for m in got_a] == [b"from-a"]
        assert [m.data for m in got_b] == [b"from-b"]

        js_a, js_b = nca.jetstream(), ncb.jetstream()
        await js_a.publish("agents.d1.telemetry.system", b'{"only": "a"}')
        info_a = await js_a.stream_info("TELEMETRY")
        info_b = await js_b.stream_info("TELEMETRY")
        assert info_a.state.messages == 1
        assert info_b.state.messages == 0, "tenant B's stream saw tenant A's telemetry"
    finally:
        await nca.close()
        await ncb.close()


def _collect(bucket):
    async def cb(msg):
        bucket.append(msg)
    return cb


async def _has(errors, text):
    return any(text in str(e).lower() for e in errors)


async def _count(js, n):
    return (await js.stream_info("TELEMETRY")).state.messages >= n


async def _both(a, b):
    return bool(a) and bool(b)


async def test_anonymous_connection_is_refused(nats_env):
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(nats_env.url, allow_reconnect=False, max_reconnect_attempts=0,
                           connect_timeout=2, error_cb=_quiet)


async def _quiet(exc):
    return None
