"""Abuse of the device requests (`agents.<code>.ctl.*`, pb_hooks_bridge/device_requests.py):
the bridge never answers into a subject the device may not publish to, and a flood of
requests neither delays the flooding device's own disable nor another tenant's answers."""

from __future__ import annotations

import asyncio
import json
import time

from cairn_common import natsjwt
from cairn_common.device_control import control_subject
from cairn_common.natsauth import device_inbox
from tests.live import account_ready, connect, enroll, eventually, new_device, new_tenant


async def _device(admin, pb_env, nats_env, tenant, **kwargs):
    enrolled = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    code = enrolled.device["code"]
    nc = await connect(nats_env.url, enrolled.jwt, enrolled.seed,
                       inbox_prefix=device_inbox(code), **kwargs)
    return enrolled, code, nc


async def _service(admin, nats_env, tenant):
    svc = await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{tenant["id"]}" && name = "cairn-bridge" && jwt != ""'), 10)
    return await connect(nats_env.url, svc["jwt"], svc["seed"])


async def test_answers_go_only_to_the_asking_devices_inbox(bridge, admin, pb_env, nats_env):
    tenant = await account_ready(admin, await new_tenant(admin))
    _, code_a, nc_a = await _device(admin, pb_env, nats_env, tenant)
    _, code_b, nc_b = await _device(admin, pb_env, nats_env, tenant)
    watcher = await _service(admin, nats_env, tenant)
    landed: list[str] = []

    async def seen(msg):
        landed.append(msg.subject)

    targets = [f"agents.{code_b}.telemetry.system", "alerts.forged", f"agents.{code_b}.heartbeat",
               f"{device_inbox(code_b)}.guess"]
    try:
        for subject in targets:
            await watcher.subscribe(subject, cb=seen)
        await watcher.flush()
        await asyncio.sleep(0)
        await watcher.flush()
        for subject in targets:  # A asks with someone else's subject as its reply
            await nc_a.publish(control_subject(code_a, "config"), b"{}", reply=subject)
            await nc_a.publish(control_subject(code_a, "x_status_error"), b"{}", reply=subject)
        await nc_a.flush()
        # control: the same request with A's own inbox is answered
        msg = await nc_a.request(control_subject(code_a, "config"), b"{}", timeout=5)
        assert json.loads(msg.data)["status"] == "ok"
        await asyncio.sleep(0.5)
        assert landed == [], f"the bridge answered into {landed}"
    finally:
        for nc in (nc_a, nc_b, watcher):
            await nc.close()


async def test_a_renewal_flood_does_not_delay_the_devices_disable(bridge, admin, pb_env,
                                                                  nats_env):
    tenant = await account_ready(admin, await new_tenant(admin))
    closed = asyncio.Event()

    async def on_closed():
        closed.set()

    enrolled, code, nc = await _device(admin, pb_env, nats_env, tenant, closed_cb=on_closed)
    key = natsjwt.decode(enrolled.jwt)["sub"]
    answers: list[dict] = []

    async def answered(msg):
        answers.append(json.loads(msg.data))

    inbox = f"{device_inbox(code)}.flood"
    await nc.subscribe(inbox, cb=answered)
    body = json.dumps({"public_key": key, "jwt": "not-a-jwt"}).encode()
    for _ in range(3000):
        await nc.publish(control_subject(code, "renew"), body, reply=inbox)
    await nc.flush()
    await eventually(lambda: _at_least(answers, 100), 10, "the flood being answered")
    began = time.monotonic()
    await admin.update("devices", enrolled.device["id"], {"status": "disabled"})
    await asyncio.wait_for(closed.wait(), 5)
    took = time.monotonic() - began
    assert took < 1.0, f"the disable took {took:.2f} s behind the flood"
    limited = [a for a in answers if "too many requests" in a.get("error", "")
               or "already running" in a.get("error", "")]
    assert len(limited) >= 100, "the flood was not limited"


async def test_one_tenants_flood_leaves_another_tenant_answered(bridge, admin, pb_env,
                                                                nats_env):
    noisy = await account_ready(admin, await new_tenant(admin))
    quiet = await account_ready(admin, await new_tenant(admin))
    _, code_n, nc_n = await _device(admin, pb_env, nats_env, noisy)
    _, code_q, nc_q = await _device(admin, pb_env, nats_env, quiet)
    try:
        inbox = f"{device_inbox(code_n)}.flood"
        await nc_n.subscribe(inbox, cb=_ignore)
        for _ in range(20000):
            await nc_n.publish(control_subject(code_n, "config"), b"{}", reply=inbox)
        await nc_n.flush()
        began = time.monotonic()
        msg = await nc_q.request(control_subject(code_q, "config"), b"{}", timeout=5)
        assert json.loads(msg.data)["status"] == "ok"
        assert time.monotonic() - began < 2.0
    finally:
        await nc_n.close()
        await nc_q.close()


async def _ignore(msg) -> None:
    return None


async def _at_least(items: list, n: int) -> bool:
    return len(items) >= n
