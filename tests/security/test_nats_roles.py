"""Hostile identities on the bus (SPEC §11 "Replies and subjects"), on the real stack.

Each attack comes with its positive control in the same setup: device Y cannot read device
X's replies while the requester gets them; a viewer cannot pull, ack or take over the
router's durable consumer while it reads through its own; a wide role is refused for a
device while a confined one is signed.
"""

from __future__ import annotations

import asyncio
import json

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from cairn_common import creds, natsjwt, nkey
from cairn_common.natsauth import device_inbox, service_inbox
from cairn_common.pocketbase import PocketBase
from tests.live import (
    DEVICE_PASSWORD,
    account_ready,
    connect,
    enroll,
    eventually,
    new_device,
    new_tenant,
    uid,
)


@pytest.fixture
async def tenant(bridge, admin):
    return await account_ready(admin, await new_tenant(admin))


async def _service(admin, tenant, name: str = "cairn-bridge") -> tuple[str, str]:
    row = await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{tenant["id"]}" && name = "{name}" && creds != ""'), 10)
    return creds.parse(row["creds"])


async def _viewer(admin, tenant) -> tuple[str, tuple[str, str]]:
    name = uid("viewer")
    row = await admin.create("nats_users", {"tenant": tenant["id"], "name": name,
                                            "role": "viewer", "active": True})
    done = await eventually(lambda: admin.first(
        "nats_users", f'id = "{row["id"]}" && creds != ""'), 10)
    return name, creds.parse(done["creds"])


async def _barrier(*conns: nats.NATS) -> None:
    """SPEC §10: one flush after a SUB is not a reliable barrier; two are."""
    for nc in conns:
        await nc.flush()
        await asyncio.sleep(0)
        await nc.flush()


async def _responder(nc: nats.NATS, code: str) -> None:
    async def answer(msg):
        await msg.respond(json.dumps({"status": "pong", "secret": f"of {code}"}).encode())
    await nc.subscribe(f"agents.{code}.cmd.>", cb=answer)


def _violations(errors: list[Exception]) -> list[str]:
    return [str(e) for e in errors if "permissions violation" in str(e).lower()]


# ------------------------------------------------------------------ replies and inboxes


async def test_device_cannot_read_another_devices_replies(tenant, admin, pb_env, nats_env):
    x = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    y = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    code_x, code_y = x.device["code"], y.device["code"]
    errors_y: list[Exception] = []
    nc_x = await connect(nats_env.url, x.jwt, x.seed, inbox_prefix=device_inbox(code_x))
    nc_y = await connect(nats_env.url, y.jwt, y.seed, errors_y,
                         inbox_prefix=device_inbox(code_y))
    nc_svc = await connect(nats_env.url, *await _service(admin, tenant),
                           inbox_prefix=service_inbox("cairn-bridge"))
    stolen: list[bytes] = []

    async def steal(msg):
        stolen.append(msg.data)

    try:
        await _responder(nc_x, code_x)
        for subject in ("_INBOX.>", "_INBOX_svc_cairn-bridge.>", f"{device_inbox(code_x)}.>",
                        ">", f"agents.{code_x}.>"):
            await nc_y.subscribe(subject, cb=steal)
        own: list[bytes] = []

        async def mine(msg):
            own.append(msg.data)

        await nc_y.subscribe(f"{device_inbox(code_y)}.probe", cb=mine)
        await _barrier(nc_x, nc_y, nc_svc)
        reply = await nc_svc.request(f"agents.{code_x}.cmd.ping", b"{}", timeout=5)
        assert json.loads(reply.data)["secret"] == f"of {code_x}"  # the requester got it
        await nc_svc.publish(f"{device_inbox(code_y)}.probe", b"for y")  # Y's own inbox works
        await eventually(lambda: _ready(own), 5, "Y's own inbox delivery")
        assert own == [b"for y"]
        await eventually(lambda: _ready(_violations(errors_y)), 5)
        assert stolen == [], "device Y read traffic meant for others"
        assert len(_violations(errors_y)) >= 4
    finally:
        for nc in (nc_x, nc_y, nc_svc):
            await nc.close()


async def _ready(value):
    return value or None


async def test_device_request_and_jetstream_ack_use_its_own_inbox(tenant, admin, pb_env,
                                                                   nats_env):
    """The positive side of the inbox rule: requests and publish acks still work."""
    x = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    code = x.device["code"]
    nc = await connect(nats_env.url, x.jwt, x.seed, inbox_prefix=device_inbox(code))
    try:
        ack = await nc.jetstream().publish(f"agents.{code}.telemetry.system", b'{"cpu": 1}')
        assert ack.stream == "TELEMETRY"
    finally:
        await nc.close()
    errors: list[Exception] = []
    wrong = await connect(nats_env.url, x.jwt, x.seed, errors)  # default _INBOX. prefix
    try:
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await wrong.jetstream(timeout=1).publish(f"agents.{code}.telemetry.system", b"{}")
    finally:
        await wrong.close()


# ------------------------------------------------------------------ device roles


async def test_bridge_refuses_a_wide_device_role(tenant, admin, pb_env):
    wide = await admin.create("nats_roles", {
        "tenant": tenant["id"], "name": uid("wide"), "publish_allow": [">"],
        "subscribe_allow": [">"], "allow_responses": True})
    sneaky = await admin.create("nats_roles", {
        "tenant": tenant["id"], "name": uid("sneaky"), "publish_allow": ["agents.{code}.>"],
        "subscribe_allow": ["agents.*.cmd.>"], "allow_responses": True})
    empty = await admin.create("nats_roles", {
        "tenant": tenant["id"], "name": uid("empty"), "publish_allow": [],
        "subscribe_allow": ["agents.{code}.cmd.>"], "allow_responses": True})
    narrow = await admin.create("nats_roles", {
        "tenant": tenant["id"], "name": uid("narrow"),
        "publish_allow": ["agents.{code}.telemetry.>"],
        "subscribe_allow": ["agents.{code}.cmd.ping", "{inbox}.>"], "allow_responses": True})
    refused = []
    for role in (wide, sneaky, empty):
        device = await new_device(admin, tenant, role=role["name"])
        await _register_key(pb_env, device)
        row = await eventually(lambda d=device: _error_of(admin, d), 10)
        assert "outside the device's own subjects" in row["error"] \
            or "NATS reads as every subject" in row["error"], row["error"]
        assert row["nats_jwt"] == ""
        refused.append(row)
    ok = await enroll(pb_env.url, admin, await new_device(admin, tenant, role=narrow["name"]))
    claims = natsjwt.decode(ok.jwt)["nats"]
    code = ok.device["code"]
    assert claims["pub"]["allow"] == [f"agents.{code}.telemetry.>"]
    assert claims["sub"]["allow"] == [f"agents.{code}.cmd.ping", f"_INBOX_{code}.>"]
    assert ok.device["error"] == ""


async def _register_key(pb_env, device) -> None:
    async with PocketBase(pb_env.url) as as_device:
        await as_device.auth_with_password("devices", device["login"], DEVICE_PASSWORD)
        await as_device.update("devices", device["id"], {
            "nats_public_key": nkey.create("user").public_key.decode()})


async def _error_of(admin, device):
    row = await admin.get("devices", device["id"])
    return row if row.get("error") else None


async def test_role_change_is_audited_and_reissued(tenant, admin, pb_env, bridge):
    narrow = await admin.create("nats_roles", {
        "tenant": tenant["id"], "name": uid("narrow"), "publish_allow": ["agents.{code}.>"],
        "subscribe_allow": ["agents.{code}.cmd.>", "{inbox}.>"], "allow_responses": True})

    async def role_known():  # a reconciliation running meanwhile (a NATS restart in an
        # earlier test) may reload the roles from before this one (issue 11's race)
        b = bridge.bridge
        return not b.reconciler.lock.locked() and b.roles.rows.get(narrow["id"])

    await eventually(role_known, 30, "the bridge knows the new role")
    enrolled = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    device = enrolled.device
    await admin.update("devices", device["id"], {"role": narrow["name"]})

    async def audited():
        return await admin.first("audit_log", f'action = "device.role_changed" && '
                                 f'target = "devices/{device["code"]}"')

    try:
        row = await eventually(audited, 30)
    except AssertionError:
        now = await admin.get("devices", device["id"])
        rows = await admin.list("audit_log", filter=f'target = "devices/{device["code"]}"')
        tags = natsjwt.decode(now["nats_jwt"])["nats"].get("tags") if now["nats_jwt"] else None
        first = natsjwt.decode(enrolled.jwt)["nats"].get("tags")
        raise AssertionError(f"no role_changed audit; device row: role={now['role']!r} "
                             f"error={now['error']!r} status={now['status']!r} tags={tags} "
                             f"enrolled tags={first} audit={[r['action'] for r in rows]} "
                             f"details={[r['details'] for r in rows]} "
                             f"audit queue={len(bridge.bridge.audit.queue)} "
                             f"writer={bridge.bridge.audit._task!r}") from None
    assert row["details"] == {"from": "agent", "to": narrow["name"]}
    reissued = await eventually(lambda: _jwt_changed(admin, device, enrolled.jwt), 10)
    tags = natsjwt.decode(reissued["nats_jwt"])["nats"]["tags"]
    assert tags == [f"role:{narrow['name']}"]


async def _jwt_changed(admin, device, old):
    row = await admin.get("devices", device["id"])
    return row if row["nats_jwt"] and row["nats_jwt"] != old else None


async def test_tenant_role_cannot_shadow_a_global_one(tenant, admin, pb_env):
    """A tenant admin's own `agent` (or `router`) role would replace the global one for
    every device of the tenant."""
    import httpx

    from tests.factories import make_user

    with httpx.Client(base_url=pb_env.url, timeout=10) as su:
        su.headers["Authorization"] = pb_env.admin_token()
        manager = make_user(su, {tenant["id"]: "admin"})
    try:
        for name in ("agent", "router", "service", "viewer"):
            resp = manager.client.post("/api/collections/nats_roles/records", json={
                "tenant": tenant["id"], "name": name, "publish_allow": [">"]})
            assert resp.status_code == 400, (name, resp.text)
        ok = manager.client.post("/api/collections/nats_roles/records", json={
            "tenant": tenant["id"], "name": uid("mine"), "publish_allow": ["agents.{code}.>"]})
        assert ok.status_code == 200, ok.text
        renamed = manager.client.patch(f"/api/collections/nats_roles/records/{ok.json()['id']}",
                                       json={"name": "agent"})
        assert renamed.status_code == 404
    finally:
        manager.close()


# ------------------------------------------------------------------ viewers and consumers


async def test_viewer_reads_but_never_touches_the_routers_consumer(tenant, admin, pb_env,
                                                                   nats_env):
    name, (jwt, seed) = await _viewer(admin, tenant)
    errors: list[Exception] = []
    viewer = await connect(nats_env.url, jwt, seed, errors, inbox_prefix=service_inbox(name))
    svc = await connect(nats_env.url, *await _service(admin, tenant))
    js_svc = svc.jetstream(timeout=5)
    try:
        await js_svc.add_consumer("TELEMETRY", ConsumerConfig(
            durable_name="cairn-router", ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL))
        live: list[bytes] = []

        async def on_live(msg):
            live.append(msg.data)

        await viewer.subscribe("agents.*.telemetry.>", cb=on_live)
        await _barrier(viewer)
        await js_svc.publish("agents.d1.telemetry.system", b'{"cpu_percent": 5}')
        js = viewer.jetstream(timeout=2)
        # attacks: the router's durable consumer cannot be pulled, changed or deleted, no
        # consumer of its own either (see the push test below), no JetStream API at all
        # (its reply subject would be an injection, see the next test), and no command
        for attempt in (
            lambda: viewer.request("$JS.API.CONSUMER.MSG.NEXT.TELEMETRY.cairn-router",
                                   b'{"batch": 1}', timeout=1),
            lambda: js.add_consumer("TELEMETRY", ConsumerConfig(
                durable_name="cairn-router", filter_subject="nothing.>")),
            lambda: js.delete_consumer("TELEMETRY", "cairn-router"),
            lambda: js.add_consumer("TELEMETRY", ConsumerConfig(name=name)),
            lambda: js.get_msg("TELEMETRY", seq=1, direct=True),
            lambda: viewer.request("agents.d1.cmd.ping", b"{}", timeout=1),
        ):
            with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError,
                                nats.js.errors.Error)):
                await attempt()
        info = await js_svc.consumer_info("TELEMETRY", "cairn-router")
        assert info.config.filter_subject in (None, "")
        assert info.num_pending == 1  # nothing was taken from it
        # positive control: live telemetry arrives
        await eventually(lambda: _ready(live), 5)
        assert json.loads(live[0]) == {"cpu_percent": 5}
    finally:
        await viewer.close()
        await svc.close()


async def test_viewer_push_consumer_cannot_deliver_into_a_device(tenant, admin, pb_env,
                                                                 nats_env):
    """A push consumer's deliver subject is chosen by its creator: it must not let a viewer
    inject stream messages into another identity's subjects."""
    name, (jwt, seed) = await _viewer(admin, tenant)
    x = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    code = x.device["code"]
    device = await connect(nats_env.url, x.jwt, x.seed, inbox_prefix=device_inbox(code))
    viewer = await connect(nats_env.url, jwt, seed, inbox_prefix=service_inbox(name))
    svc = await connect(nats_env.url, *await _service(admin, tenant))
    got: list[bytes] = []

    async def on_cmd(msg):
        got.append(msg.data)

    try:
        await device.subscribe(f"agents.{code}.cmd.exec", cb=on_cmd)
        await _barrier(device)
        await svc.jetstream().publish("agents.d2.telemetry.system", b'{"command": "uptime"}')
        try:
            await viewer.jetstream(timeout=2).add_consumer("TELEMETRY", ConsumerConfig(
                name=name, deliver_subject=f"agents.{code}.cmd.exec",
                deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE))
        except (nats.errors.TimeoutError, nats.js.errors.Error):
            pass  # refused outright: fine too
        # positive control on the same device connection: a real command still arrives
        await svc.publish(f"agents.{code}.cmd.exec", b"real")
        await eventually(lambda: _ready(got), 5)
        await _barrier(svc, device)
        assert got == [b"real"], "a viewer's consumer delivered into the device's subjects"
    finally:
        for nc in (device, viewer, svc):
            await nc.close()


async def test_jetstream_replies_cannot_be_aimed_at_a_device(tenant, admin, pb_env, nats_env):
    """NATS does not check a reply subject: a viewer's JetStream API request with reply
    `agents.X.cmd.rotate_creds` would have the server itself deliver the answer there."""
    name, (jwt, seed) = await _viewer(admin, tenant)
    x = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    code = x.device["code"]
    device = await connect(nats_env.url, x.jwt, x.seed, inbox_prefix=device_inbox(code))
    errors: list[Exception] = []
    viewer = await connect(nats_env.url, jwt, seed, errors, inbox_prefix=service_inbox(name))
    svc = await connect(nats_env.url, *await _service(admin, tenant))
    got: list[bytes] = []

    async def on_cmd(msg):
        got.append(msg.data)

    try:
        await device.subscribe(f"agents.{code}.cmd.>", cb=on_cmd)
        await _barrier(device)
        for api in ("$JS.API.DIRECT.GET.TELEMETRY", "$JS.API.INFO",
                    "$JS.API.STREAM.INFO.TELEMETRY"):
            await viewer.publish(api, b'{"last_by_subj": "agents.none.telemetry.x"}',
                                 reply=f"agents.{code}.cmd.rotate_creds")
        await _barrier(viewer)
        await eventually(lambda: _ready(_violations(errors)), 5)
        await svc.publish(f"agents.{code}.cmd.ping", b"real")  # control on the same device
        await eventually(lambda: _ready(got), 5)
        await _barrier(svc, device)
        assert got == [b"real"], "a JetStream reply reached the device's command subject"
    finally:
        for nc in (device, viewer, svc):
            await nc.close()


async def test_device_cannot_answer_its_own_request_into_another_subject(tenant, admin, pb_env,
                                                                         nats_env):
    """allow_responses lets a device publish to the reply subject of a request it got; if
    it could send itself one, it could publish anywhere (another agent's exec)."""
    x = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    y = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    code_x, code_y = x.device["code"], y.device["code"]
    errors: list[Exception] = []
    nc_x = await connect(nats_env.url, x.jwt, x.seed, errors, inbox_prefix=device_inbox(code_x))
    nc_y = await connect(nats_env.url, y.jwt, y.seed, inbox_prefix=device_inbox(code_y))
    svc = await connect(nats_env.url, *await _service(admin, tenant))
    at_y: list[bytes] = []

    async def on_y(msg):
        at_y.append(msg.data)

    async def answer(msg):  # the hostile device "replies" to whatever reply it was given
        if msg.reply:
            await nc_x.publish(msg.reply, b'{"command": "hostname"}')

    try:
        await nc_y.subscribe(f"agents.{code_y}.cmd.>", cb=on_y)
        await nc_x.subscribe(f"agents.{code_x}.cmd.>", cb=answer)
        await nc_x.subscribe(f"{device_inbox(code_x)}.>", cb=answer)
        await _barrier(nc_x, nc_y)
        await nc_x.publish(f"agents.{code_x}.cmd.x", b"{}", reply=f"agents.{code_y}.cmd.exec")
        await nc_x.publish(f"{device_inbox(code_x)}.x", b"{}",
                           reply=f"agents.{code_y}.cmd.exec")
        await _barrier(nc_x)
        await eventually(lambda: _ready(_violations(errors)), 5)
        # control: a real request to X is answered through allow_responses, and Y hears
        # what is really sent to it
        reply = await svc.request(f"agents.{code_x}.cmd.ping", b"{}", timeout=5)
        assert reply.data == b'{"command": "hostname"}'
        await svc.publish(f"agents.{code_y}.cmd.ping", b"real")
        await eventually(lambda: _ready(at_y), 5)
        await _barrier(svc, nc_y)
        assert at_y == [b"real"], "device X published into device Y's commands"
        claims = natsjwt.decode(x.jwt)["nats"]
        assert f"agents.{code_x}.cmd.>" in claims["pub"]["deny"]
    finally:
        for nc in (nc_x, nc_y, svc):
            await nc.close()
