"""After enrollment an agent renews its JWT and follows its desired config over its own
NATS connection: no password login to PocketBase (SPEC §12). And the requests it makes
(agents.<code>.ctl.*, pb_hooks_bridge/device_requests.py) give nobody else anything."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import nats
import pytest

from agent import config as config_mod
from agent.app import AgentApp
from cairn_common import creds, natsjwt
from cairn_common.device_control import control_subject
from cairn_common.natsauth import device_inbox
from tests.live import (
    BridgeHandle,
    account_ready,
    connect,
    enroll,
    enrolled_agent_site,
    eventually,
    new_device,
    new_tenant,
)

DEVICE_LOGIN = "/api/collections/devices/auth-with-password"


async def _password_logins(admin, since: str) -> int:
    """Device password logins PocketBase logged since `since` (its request log)."""
    body = await admin._send("GET", "/api/logs", params={
        "filter": f'data.url ~ "{DEVICE_LOGIN}" && created >= "{since}"', "perPage": 1})
    return int(body["totalItems"])


def _pb_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


async def _ask(nc, code: str, kind: str, body: dict, timeout: float = 10) -> dict:
    msg = await nc.request(control_subject(code, kind), json.dumps(body).encode(),
                           timeout=timeout)
    return json.loads(msg.data)


@pytest.mark.timeout(240)
async def test_renewal_and_config_need_no_password(bridge, admin, pb_env, nats_env,
                                                   tmp_path_factory):
    """One-minute JWTs: the agent renews twice over NATS, its row and the audit log show
    each renewal, a config change arrives by hint, and PocketBase logs no device password
    login after enrollment (the enrollment's own login is the control of the count)."""
    await bridge.stop()
    own = BridgeHandle(dataclasses.replace(bridge.config, user_jwt_ttl=60))
    app = None
    try:
        await own.start()
        started = _pb_now()
        site = await enrolled_agent_site(admin, pb_env.url, nats_env.url,
                                         tmp_path_factory.mktemp("renew"))
        code = site.device["code"]
        await eventually(lambda: _at_least(_password_logins(admin, started), 1), 20,
                         "the enrollment's login shows in PocketBase's log")
        logins_after_enrollment = await _password_logins(admin, started)
        after = _pb_now()
        app = AgentApp(config_mod.load(site.config_path))
        await app.start()
        first_jwt = app.credentials.current()[0]
        await eventually(lambda: _renewed(app, 2), 120, "two renewals over NATS")
        assert app.credentials.renewed["password"] == 0
        renewed = app.credentials.current()[0]
        assert natsjwt.decode(renewed)["sub"] == natsjwt.decode(first_jwt)["sub"]
        assert natsjwt.decode(renewed)["iat"] > natsjwt.decode(first_jwt)["iat"]
        row = await admin.get("devices", site.device["id"])
        assert row["nats_jwt"] == renewed  # the row shows the JWT the agent holds
        assert creds.read(app.credentials.creds_path)[0] == renewed  # and so does its file
        reply = await _ask_as_service(admin, nats_env, site.tenant, code, "ping")
        assert reply["status"] == "pong"

        # desired config: written by an admin, hinted, fetched over NATS, applied
        await admin.update("devices", site.device["id"],
                           {"config": {"intervals": {"heartbeat": 9}}})
        await eventually(lambda: _heartbeat_is(app, 9.0), 10, "desired config applied")
        await asyncio.sleep(3)  # PocketBase writes its request log in batches
        assert await _password_logins(admin, after) == 0
        assert logins_after_enrollment >= 1
    finally:
        if app is not None:
            await app.stop()
        await own.stop()
        await bridge.start()


async def test_renewal_requests_refused_unless_due_and_own(bridge, admin, pb_env, nats_env):
    tenant = await account_ready(admin, await new_tenant(admin))
    a = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    b = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    code_a, code_b = a.device["code"], b.device["code"]
    nc_a = await connect(nats_env.url, a.jwt, a.seed, inbox_prefix=device_inbox(code_a))
    errors: list[Exception] = []
    nc_b = await connect(nats_env.url, b.jwt, b.seed, errors,
                         inbox_prefix=device_inbox(code_b))
    try:
        key_a = natsjwt.decode(a.jwt)["sub"]
        # a fresh JWT (an hour long here) is not due: an error that says when, no new JWT
        early = await _ask(nc_a, code_a, "renew", {"public_key": key_a, "jwt": a.jwt})
        assert early["status"] == "error" and "not due" in early["error"], early
        # a key that is not the device's registered one (with a JWT that is not a grant:
        # past the early "not due" check, into the device's lane)
        other = natsjwt.decode(b.jwt)["sub"]
        wrong = await _ask(nc_a, code_a, "renew", {"public_key": other, "jwt": "x"})
        assert wrong["status"] == "error" and "registered key" in wrong["error"], wrong
        bad = await _ask(nc_a, code_a, "renew", {"public_key": 7})
        assert bad["status"] == "error" and "public_key and jwt" in bad["error"]
        # device B cannot ask in A's name (its role publishes on its own subjects only)
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await nc_b.request(control_subject(code_a, "config"), b"{}", timeout=1)
        await eventually(lambda: _violation(errors), 5, "permissions violation for B")
        # positive control: each device reads its own desired config
        own_b = await _ask(nc_b, code_b, "config", {})
        assert own_b["status"] == "ok" and own_b["config"] == {}
        assert (await _ask(nc_a, code_a, "config", {}))["status"] == "ok"
        rows = await admin.list("audit_log", filter=f'target = "devices/{code_a}" && '
                                                    f'action = "user.issued"')
        assert len(rows) == 1, "a refused renewal issued a JWT"
    finally:
        await nc_a.close()
        await nc_b.close()


async def test_another_tenants_device_is_unknown(bridge, admin, pb_env, nats_env):
    home = await account_ready(admin, await new_tenant(admin))
    away = await account_ready(admin, await new_tenant(admin))
    victim = await enroll(pb_env.url, admin, await new_device(admin, away))
    code = victim.device["code"]
    # a service user of `home` asks for `away`'s device in its own account (with the
    # device's inbox as reply, the only one answered): unknown there
    reply = await _ask_as_service(admin, nats_env, home, code, None, kind="config",
                                  inbox=device_inbox(code))
    assert reply["status"] == "error" and "no device" in reply["error"], reply
    # control: in its own tenant the same request is answered
    reply = await _ask_as_service(admin, nats_env, away, code, None, kind="config",
                                  inbox=device_inbox(code))
    assert reply["status"] == "ok"
    # and with its own inbox as reply it gets no answer at all
    with pytest.raises(nats.errors.TimeoutError):
        await _ask_as_service(admin, nats_env, away, code, None, kind="config", timeout=1)


async def _ask_as_service(admin, nats_env, tenant, code: str, command: str | None,
                          kind: str = "", inbox: str = "_INBOX_svc_cairn-bridge",
                          timeout: float = 10) -> dict:
    svc = await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{tenant["id"]}" && name = "cairn-bridge" && jwt != ""'), 10)
    nc = await connect(nats_env.url, svc["jwt"], svc["seed"], inbox_prefix=inbox)
    try:
        if command is not None:
            msg = await nc.request(f"agents.{code}.cmd.{command}", b"{}", timeout=10)
            return json.loads(msg.data)
        return await _ask(nc, code, kind, {}, timeout)
    finally:
        await nc.close()


async def _at_least(count, wanted: int) -> bool:
    return (await count) >= wanted


async def _renewed(app, wanted: int) -> bool:
    return app.credentials.renewed["nats"] >= wanted


async def _heartbeat_is(app, seconds: float) -> bool:
    return app.config.intervals.heartbeat == seconds


async def _violation(errors) -> bool:
    return any("permissions violation" in str(e).lower() for e in errors)
