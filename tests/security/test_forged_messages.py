"""Forged reply subjects, live: NATS never checks a publisher's reply subject against its
permissions, and JetStream answers into it with the account's own client. A device's own
telemetry publish (PubAck), a service user's direct get (a stored message with Nats-*
headers, or an empty `Status: 404`) and a push consumer (reply `$JS.ACK.…`) can all put a
message into another device's command or heartbeat subject.

Each attack is shown arriving (a service connection listens on the same subject), then
refused at the receiver: the agent runs nothing (`commands.dropped` counts it), presence
marks nothing online and drains nothing (`cairn_bridge_heartbeats_ignored_total`). Positive
controls in the same setup: a real request to the same agent is answered and runs the same
script; the real agent's heartbeat marks its device online and drains its queued command.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agent import config as config_mod
from agent.app import AgentApp
from agent.dispatcher import now_rfc3339
from agent.enrollment import EnrollRequest
from agent.enrollment import enroll as agent_enroll
from cairn_common import creds
from cairn_common.natsauth import device_inbox, service_inbox
from pb_hooks_bridge import metrics
from tests.live import (
    DEVICE_PASSWORD,
    connect,
    enroll,
    enrolled_agent_site,
    eventually,
    new_device,
    uid,
    write_agent_config,
)

pytestmark = pytest.mark.timeout(180)


class Arena:
    """One tenant: agent Y running, device Z enrolled but not running, attacker device X,
    and the tenant's service connection (the direct gets and the listening)."""

    def __init__(self) -> None:
        self.app: AgentApp | None = None
        self.z_app: AgentApp | None = None
        self.conns: list[NATS] = []
        self.heard: dict[str, list[Any]] = {}

    def listen(self, subject: str, msg: Any) -> None:
        self.heard.setdefault(subject, []).append(msg)

    def heard_on(self, subject: str) -> list[Any]:
        return self.heard.get(subject, [])


@pytest.fixture(scope="module")
async def arena(bridge, admin, pb_env, nats_env, tmp_path_factory):
    a = Arena()
    site = await enrolled_agent_site(admin, pb_env.url, nats_env.url,
                                     tmp_path_factory.mktemp("forged-y"))
    a.tenant, a.y, a.y_dir = site.tenant, site.device, site.directory
    a.app = AgentApp(config_mod.load(site.config_path))
    await a.app.start()
    # Z: enrolled the way the agent does it, its agent not started (offline)
    a.z = await new_device(admin, a.tenant)
    a.z_dir = tmp_path_factory.mktemp("forged-z")
    a.z_config = write_agent_config(a.z_dir, a.z["code"], pb_env.url, nats_env.url,
                                    a.tenant["slug"])
    await agent_enroll(EnrollRequest(server=pb_env.url, code=a.z["code"], directory=a.z_dir,
                                     tenant=a.tenant["slug"],
                                     nats_urls=(nats_env.url,), secret=DEVICE_PASSWORD))
    x = await enroll(pb_env.url, admin, await new_device(admin, a.tenant))
    a.x = x.device
    a.nc_x = await connect(nats_env.url, x.jwt, x.seed, inbox_prefix=device_inbox(a.x["code"]))
    row = await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{a.tenant["id"]}" && name = "cairn-bridge" && creds != ""'),
        10)
    a.svc = await connect(nats_env.url, *creds.parse(row["creds"]),
                          inbox_prefix=service_inbox("cairn-bridge"))
    a.conns = [a.nc_x, a.svc]

    # literal subjects: nats-server starts a push consumer only on literal interest in its
    # deliver subject (a wildcard subscription, like the agent's, alone does not). Kept by
    # subscription: a push delivery shows the stored message's subject, not the deliver one.
    listened = [f"agents.{a.y['code']}.cmd.{c}" for c in ("rotate_creds", "ping", "exec")]
    for subject in (*listened, f"agents.{a.z['code']}.heartbeat"):
        await a.svc.subscribe(subject, cb=_keeper(a, subject))
    await _barrier(a.svc)
    await eventually(lambda: _pong(a), 10, "agent Y answering")
    yield a
    for app in (a.app, a.z_app):
        if app is not None:
            await app.stop()
    for nc in a.conns:
        await nc.close()


def _keeper(a: Arena, subject: str) -> Any:
    async def keep(msg: Any) -> None:
        a.listen(subject, msg)
    return keep


async def _barrier(*conns: NATS) -> None:
    """SPEC §10: one flush after a SUB is not a reliable barrier; two are."""
    for nc in conns:
        await nc.flush()
        await asyncio.sleep(0)
        await nc.flush()


async def _pong(a: Arena) -> bool:
    try:
        reply = await a.svc.request(f"agents.{a.y['code']}.cmd.ping", b"{}", timeout=2)
    except Exception:
        return False
    return json.loads(reply.data)["status"] == "pong"


async def _request(a: Arena, command: str, payload: dict[str, Any]) -> dict[str, Any]:
    msg = await a.svc.request(f"agents.{a.y['code']}.cmd.{command}",
                              json.dumps(payload).encode(), timeout=15)
    return json.loads(msg.data)


async def _store(a: Arena, body: dict[str, Any], reply: str = "", last: str = "") -> str:
    """Device X stores `body` on its own telemetry subject (what every device may do), one
    of its own ending in `last` when given."""
    subject = f"agents.{a.x['code']}.telemetry.{uid('t')}" + (f".{last}" if last else "")
    ack = await a.nc_x.jetstream().publish(subject, json.dumps(body).encode())
    assert ack.stream == "TELEMETRY"
    if reply:  # the same publish again, with a forged reply: its PubAck goes there
        await a.nc_x.publish(subject, json.dumps(body).encode(), reply=reply)
    return subject


async def _direct_get(a: Arena, subject: str, reply: str) -> None:
    await a.svc.publish("$JS.API.DIRECT.GET.TELEMETRY",
                        json.dumps({"last_by_subj": subject}).encode(), reply=reply)


async def _push_last(a: Arena, subject: str, deliver: str) -> str:
    """A push consumer that delivers the last message of `subject` to `deliver`."""
    name = uid("push")
    await a.svc.jetstream().add_consumer("TELEMETRY", ConsumerConfig(
        name=name, deliver_subject=deliver, filter_subject=subject,
        deliver_policy=DeliverPolicy.LAST, ack_policy=AckPolicy.NONE))
    return name


async def _heard(a: Arena, subject: str, count: int) -> list[Any] | None:
    """What the service connection heard on `subject`, once it is `count` messages."""
    heard = a.heard_on(subject)
    return heard if len(heard) >= count else None


async def _dropped(a: Arena, count: int) -> bool:
    return a.app.ctx.stats.commands_dropped >= count


# -- the agent: commands must be real requests ---------------------------------------------


async def test_a_404_direct_get_aimed_at_rotate_creds_does_not_rotate(arena):
    a, code = arena, arena.y["code"]
    subject = f"agents.{code}.cmd.rotate_creds"
    seed = (a.y_dir / "agent.nk").read_text()
    stats = a.app.ctx.stats
    dropped, processed = stats.commands_dropped, stats.commands_processed
    await _direct_get(a, "agents.none.telemetry.x", reply=subject)
    await eventually(lambda: _dropped(a, dropped + 1), 10, "the 404 dropped")
    (forged,) = await eventually(lambda: _heard(a, subject, 1), 10, "the 404 seen")
    assert forged.headers["Status"] == "404" and forged.data == b"" and not forged.reply
    assert stats.commands_processed == processed and a.app._rotation is None
    assert (a.y_dir / "agent.nk").read_text() == seed, "the agent rotated its key"
    assert await _pong(a), "control: a real request to the same agent is answered"
    assert stats.commands_processed == processed + 1


async def test_a_devices_puback_aimed_at_ping_is_not_answered(arena):
    a, code = arena, arena.y["code"]
    subject = f"agents.{code}.cmd.ping"
    before = len(a.heard_on(subject))
    stats = a.app.ctx.stats
    dropped, processed = stats.commands_dropped, stats.commands_processed
    await _store(a, {"cpu_percent": 1}, reply=subject)
    await eventually(lambda: _dropped(a, dropped + 1), 10, "the PubAck dropped")
    forged = (await eventually(lambda: _heard(a, subject, before + 1), 10, "it seen"))[before]
    assert json.loads(forged.data)["stream"] == "TELEMETRY" and not forged.reply
    assert stats.commands_processed == processed
    health = await _request(a, "health", {})  # control: answered, and it shows the drops
    assert health["commands"]["dropped"] == stats.commands_dropped >= dropped + 1


async def test_the_routers_throttle_write_aimed_at_ping_and_a_heartbeat_does_nothing(
        arena, admin, bridge, nats_env, router_identity):
    """The router may write its throttle keys (`$KV.CAIRN_THROTTLE.<identity>.>`,
    pb_migrations/1764000005): the PubAck of such a write with a forged reply lands where
    the router points it. Aimed at Y's ping it is dropped by the agent; aimed at Z's
    heartbeat it marks nothing online. Control: the same write with no forged reply is
    stored (the right is real), and Y still answers a real ping."""
    a, code, z = arena, arena.y["code"], arena.z
    ping, heartbeat = f"agents.{code}.cmd.ping", f"agents.{z['code']}.heartbeat"
    row = await eventually(lambda: admin.first("nats_users", (
        f'tenant = "{a.tenant["id"]}" && name = "{router_identity.name}" && jwt != ""')), 10)
    router = await connect(nats_env.url, *router_identity.creds_for(row),
                           inbox_prefix=service_inbox(router_identity.name))
    a.conns.append(router)
    key = f"$KV.CAIRN_THROTTLE.{router_identity.name}.{uid('k')}"
    body = json.dumps({"until": 0, "seq": None}).encode()
    ack = await router.jetstream().publish(key, body)  # control: the write itself is allowed
    assert ack.stream == "KV_CAIRN_THROTTLE"
    stats = a.app.ctx.stats
    dropped, processed = stats.commands_dropped, stats.commands_processed
    pinged, beats = len(a.heard_on(ping)), len(a.heard_on(heartbeat))
    ignored = _ignored("body")
    await router.publish(key, body, reply=ping)
    await router.publish(key, body, reply=heartbeat)
    await eventually(lambda: _dropped(a, dropped + 1), 10, "the PubAck at ping dropped")
    await eventually(lambda: _at_least((_ignored("body"), ignored + 1)), 10,
                     "the PubAck at the heartbeat ignored")
    forged = (await eventually(lambda: _heard(a, ping, pinged + 1), 10, "it seen"))[pinged]
    assert json.loads(forged.data)["stream"] == "KV_CAIRN_THROTTLE" and not forged.reply
    assert await eventually(lambda: _heard(a, heartbeat, beats + 1), 10, "it seen too")
    assert stats.commands_processed == processed
    assert z["id"] not in bridge.bridge.presence.seen  # Z's agent is not running yet
    assert (await admin.get("devices", z["id"]))["online"] is False
    assert await _pong(a)  # control: a real request is still answered


async def test_a_stored_exec_request_delivered_by_jetstream_does_not_run(arena):
    """The worst case: X stores a complete exec request; a direct get (Nats-* headers, no
    reply) and a push consumer ($JS.ACK reply) deliver it into Y's exec subject. A push
    delivery shows the stored subject, so X's ends in `.exec`: the token the dispatcher
    would take as the command name."""
    a, code = arena, arena.y["code"]
    canary = a.y_dir / "canary-forged.txt"
    subject = f"agents.{code}.cmd.exec"
    body = {"command": "canary.sh", "args": [str(canary)]}
    stored = await _store(a, body, last="exec")
    before = len(a.heard_on(subject))
    stats = a.app.ctx.stats
    dropped, processed = stats.commands_dropped, stats.commands_processed
    await _direct_get(a, stored, reply=subject)
    consumer = await _push_last(a, stored, deliver=subject)
    try:
        await eventually(lambda: _dropped(a, dropped + 2), 10, "both deliveries dropped")
        await eventually(lambda: _heard(a, subject, before + 2), 10, "both deliveries seen")
    finally:
        await a.svc.jetstream().delete_consumer("TELEMETRY", consumer)
    got = a.heard_on(subject)[before:]
    assert [json.loads(m.data) for m in got] == [body, body]
    assert {bool(m.reply and m.reply.startswith("$JS.ACK.")) for m in got} == {True, False}
    assert any(m.headers and m.headers.get("Nats-Stream") == "TELEMETRY" for m in got)
    assert stats.commands_processed == processed
    assert not canary.exists(), "a stream message ran as a command"
    reply = await _request(a, "exec", body)  # control: the same request, really sent, runs
    assert reply["status"] == "success" and canary.read_text() == "ran\n"


# -- presence: heartbeats must look like heartbeats ----------------------------------------


def _ignored(label: str) -> float:
    return metrics.HEARTBEATS_IGNORED.labels(label)._value.get()


async def test_forged_heartbeats_neither_mark_online_nor_drain_the_queue(arena, admin,
                                                                         bridge, nats_env):
    a, z = arena, arena.z
    heartbeat = f"agents.{z['code']}.heartbeat"
    canary = a.z_dir / "canary-queued.txt"
    row = await admin.create("commands", {
        "tenant": a.tenant["id"], "device": z["id"], "command": "exec",
        "payload": {"command": "canary.sh", "args": [str(canary)]}})
    presence, dispatcher = bridge.bridge.presence, bridge.bridge.commands
    await eventually(lambda: _queued(admin, row["id"], z["id"], dispatcher), 15,
                     "the command queued for the offline device")
    # Z's own connection listens on its command subjects: a drain would first probe it
    probes: list[Any] = []
    z_creds = creds.read(a.z_dir / "agent.creds")
    nc_z = await connect(nats_env.url, *z_creds, inbox_prefix=device_inbox(z["code"]))
    a.conns.append(nc_z)

    async def probed(msg):
        probes.append(msg)

    await nc_z.subscribe(f"agents.{z['code']}.cmd.>", cb=probed)
    await _barrier(nc_z)
    body, header, reply = _ignored("body"), _ignored("server-header"), _ignored("server-reply")
    looks_real = {"status": "alive", "device": z["code"], "version": "0.1.0",
                  "uptime_seconds": 5, "timestamp": now_rfc3339()}
    stored = await _store(a, looks_real, reply=heartbeat)  # its PubAck lands on the heartbeat
    await _direct_get(a, stored, reply=heartbeat)  # the heartbeat-shaped body, with headers
    await _direct_get(a, "agents.none.telemetry.x", reply=heartbeat)  # an empty 404
    consumer = await _push_last(a, stored, deliver=heartbeat)  # no headers, a $JS.ACK reply
    try:
        await eventually(lambda: _at_least(
            (_ignored("body"), body + 1), (_ignored("server-header"), header + 2),
            (_ignored("server-reply"), reply + 1)), 10, "every forgery ignored")
        # and the forgeries did reach the heartbeat subject
        await eventually(lambda: _heard(a, heartbeat, 4), 10, "all four forgeries seen")
    finally:
        await a.svc.jetstream().delete_consumer("TELEMETRY", consumer)
    await _barrier(a.svc, nc_z)
    assert probes == [], "a forged heartbeat drained the queue (the bridge probed the device)"
    assert z["id"] not in presence.seen and z["id"] in dispatcher.offline
    device = await admin.get("devices", z["id"])
    assert device["online"] is False and not device["last_seen"]
    assert (await admin.get("commands", row["id"]))["status"] == "queued"
    await nc_z.close()
    # control: the real agent's first heartbeat marks Z online and drains its queue
    a.z_app = AgentApp(config_mod.load(a.z_config))
    await a.z_app.start()
    await eventually(lambda: _online(admin, z["id"]), 15, "Z online after its heartbeat")
    await eventually(lambda: _status(admin, row["id"], "succeeded"), 15, "queue drained")
    assert canary.read_text() == "ran\n"


async def _queued(admin, row_id: str, device_id: str, dispatcher) -> bool:
    row = await admin.get("commands", row_id)
    return row["status"] == "queued" and device_id in dispatcher.offline


async def _at_least(*pairs: tuple[float, float]) -> bool:
    return all(value >= wanted for value, wanted in pairs)


async def _online(admin, device_id: str) -> bool:
    row = await admin.get("devices", device_id)
    return bool(row["online"] and row["last_seen"])


async def _status(admin, row_id: str, status: str) -> bool:
    return (await admin.get("commands", row_id))["status"] == status
