"""Alerts are stored: a rule's publish (and a dead letter) goes into the tenant's ALERTS
stream and waits for the PubAck, with a `Nats-Msg-Id` per (message, rule, action) that
makes the stream drop a second copy; a refused PubAck is a failed publish (dead letter).
Without ALERTS the router falls back to core publishes, counted. Real PocketBase, NATS
(ALERTS made by the bridge, or here as the bridge user when the bridge does not) and
router; alerts are read back from the stream as the bridge user."""

from __future__ import annotations

import asyncio
import json

import pytest
from nats.js.api import StorageType, StreamConfig

from rule_router import alerts, metrics, tenant
from rule_router.ledger import delivery
from tests.live import eventually, uid
from tests.router.harness import (
    ALERTS,
    add_rule,
    alerts_stream,
    at_least,
    collect,
    no_alerts_stream,
    routed_tenants,
    row_with_status,
    sample,
    stored_alerts,
    telemetry_consumer,
)

pytestmark = pytest.mark.timeout(120)
MIB = 1024 * 1024
NO_ROOM = {"limits": {"jetstream_storage": 4 * MIB, "telemetry_max_bytes": 4 * MIB}}


def _rule(kind: str, topic: str, extra: str = "") -> str:
    return (f'subject: "agents.*.telemetry.{kind}"\n'
            f"actions:\n  - publish: alerts.{topic}\n    payload: '{{\"n\": {{n}}}}'\n{extra}")


async def _send(nc, kind: str, n: int) -> None:
    await nc.jetstream().publish(f"agents.d1.telemetry.{kind}", json.dumps({"n": n}).encode())


async def _settled(nc) -> bool:
    info = await telemetry_consumer(nc)
    return info.num_ack_pending == 0 and info.num_pending == 0


async def _stored(nc, subject: str, n: int) -> list:
    found = await stored_alerts(nc, subject)
    return found if len(found) >= n else []


async def test_an_alert_nobody_listens_to_is_in_alerts_afterwards(
        bridge, router_identity, admin, pb_env, nats_env):
    async with routed_tenants(admin, pb_env, nats_env, router_identity) as (
            (tenant_,), (nc,), router):
        await alerts_stream(nc)
        kind, topic = uid("st"), uid("st")
        row = await add_rule(admin, tenant_, _rule(kind, topic))
        await row_with_status(admin, row["id"], "valid")
        fallback = sample(metrics.ALERTS_CORE_FALLBACK)
        await _send(nc, kind, 7)  # nobody subscribed to alerts.<topic>
        (stored,) = await eventually(lambda: _stored(nc, f"alerts.{topic}", 1), 15,
                                     "the alert in ALERTS")
        assert json.loads(stored.data) == {"n": 7}
        assert stored.headers["Cairn-Hops"] == "1"
        assert stored.headers[alerts.MSG_ID].startswith("TELEMETRY:")
        assert router.tenants[tenant_["id"]].publisher.belief == alerts.PRESENT
        assert sample(metrics.ALERTS_CORE_FALLBACK) == fallback
        await eventually(lambda: _settled(nc), 10, "the message acked")


async def test_a_second_publish_after_a_forgotten_ack_is_dropped_by_the_stream(
        bridge, router_identity, admin, pb_env, nats_env, monkeypatch):
    """The router's own record is gone (as after a restart) and the ack was lost: the
    message runs again, and the stream keeps one copy (same Nats-Msg-Id)."""
    monkeypatch.setattr(tenant, "ACK_WAIT", 1.0)
    async with routed_tenants(admin, pb_env, nats_env, router_identity) as (
            (tenant_,), (nc,), router):
        await alerts_stream(nc)
        kind, topic = uid("dup"), uid("dup")
        row = await add_rule(admin, tenant_, _rule(kind, topic))
        await row_with_status(admin, row["id"], "valid")
        heard = await collect(nc, f"alerts.{topic}")
        runtime = router.tenants[tenant_["id"]]
        monkeypatch.setattr(runtime.ledger, "lookup", lambda seq: None)  # forgotten
        real, dropped, seen = runtime._ack, [], []

        async def lossy(msg) -> None:
            if msg.subject.endswith(kind):
                seen.append((delivery(msg.reply) or (0, 0))[1])
                if not dropped:
                    dropped.append(msg)
                    return
            await real(msg)

        monkeypatch.setattr(runtime, "_ack", lossy)
        await _send(nc, kind, 1)
        await eventually(lambda: at_least(heard, 2), 15, "published again on redelivery")
        await eventually(lambda: _settled(nc), 10, "acked the second time")
        assert seen == [1, 2]
        assert heard[0].headers[alerts.MSG_ID] == heard[1].headers[alerts.MSG_ID]
        assert len(await stored_alerts(nc, f"alerts.{topic}")) == 1


async def test_a_refused_puback_is_a_failed_publish_and_is_dead_lettered(
        bridge, router_identity, admin, pb_env, nats_env):
    async with routed_tenants(admin, pb_env, nats_env, router_identity) as (
            (tenant_,), (nc,), _router):
        await alerts_stream(nc)
        kind, topic = uid("ref"), uid("ref")
        # the stream refuses this one publish (it is not the stream the header expects)
        row = await add_rule(admin, tenant_, _rule(
            kind, topic, "    headers: {Nats-Expected-Stream: ELSEWHERE}\n"))
        await row_with_status(admin, row["id"], "valid")
        failed = sample(metrics.ACTIONS, "publish", "failed")
        await _send(nc, kind, 3)
        (letter,) = await eventually(lambda: _stored(nc, "alerts.deadletter", 1), 15,
                                     "the dead letter in ALERTS")
        doc = json.loads(letter.data)
        assert doc["action"]["subject"] == f"alerts.{topic}"
        assert doc["error"].startswith(f"publish to 'alerts.{topic}' failed")
        assert doc["original"] == {"n": 3}
        assert letter.headers[alerts.MSG_ID].endswith(":0:dead")
        assert await stored_alerts(nc, f"alerts.{topic}") == []
        assert sample(metrics.ACTIONS, "publish", "failed") == failed + 1
        await eventually(lambda: _settled(nc), 10, "dead-lettered: acked")


async def test_without_alerts_the_router_falls_back_to_core_publishes(
        bridge, router_identity, admin, pb_env, nats_env):
    async with routed_tenants(admin, pb_env, nats_env, router_identity, **NO_ROOM) as (
            (tenant_,), (nc,), router):
        await no_alerts_stream(nc)
        kind, topic = uid("core"), uid("core")
        row = await add_rule(admin, tenant_, _rule(kind, topic))
        await row_with_status(admin, row["id"], "valid")
        fallback = sample(metrics.ALERTS_CORE_FALLBACK)
        await _send(nc, kind, 0)  # nobody listens: lost, as before ALERTS, but not an error
        await eventually(lambda: _settled(nc), 10, "acked")
        heard = await collect(nc, f"alerts.{topic}")
        for n in (1, 2):
            await _send(nc, kind, n)
        await eventually(lambda: at_least(heard, 2), 10, "core alerts heard")
        await asyncio.sleep(0.3)
        assert [json.loads(m.data)["n"] for m in heard] == [1, 2]
        assert sample(metrics.ALERTS_CORE_FALLBACK) == fallback + 3
        assert router.tenants[tenant_["id"]].publisher.belief == alerts.ABSENT


async def test_a_listener_without_alerts_hears_each_alert_once(
        bridge, router_identity, admin, pb_env, nats_env, monkeypatch):
    """Another stream in the account: the router cannot tell from the stream count, so it
    probes. Nobody answers the probe (a listener, no stream): the listener already heard
    it as a core message, so it is not sent again, and no dead letter is made."""
    monkeypatch.setattr(alerts, "PROBE_TIMEOUT", 0.3)
    async with routed_tenants(admin, pb_env, nats_env, router_identity, **NO_ROOM) as (
            (tenant_,), (nc,), router):
        await no_alerts_stream(nc)
        await nc.jetstream().add_stream(StreamConfig(
            name=uid("OTHER").upper(), subjects=[f"other.{uid('x')}.>"],
            storage=StorageType.MEMORY, max_bytes=64 * 1024))
        kind, topic = uid("probe"), uid("probe")
        row = await add_rule(admin, tenant_, _rule(kind, topic))
        await row_with_status(admin, row["id"], "valid")
        heard = await collect(nc, f"alerts.{topic}")
        dead = await collect(nc, "alerts.deadletter")
        fallback = sample(metrics.ALERTS_CORE_FALLBACK)
        for n in (1, 2, 3):
            await _send(nc, kind, n)
        await eventually(lambda: at_least(heard, 3), 10, "alerts heard")
        await eventually(lambda: _settled(nc), 10, "acked")
        await asyncio.sleep(0.5)
        assert [json.loads(m.data)["n"] for m in heard] == [1, 2, 3]
        assert dead == []
        assert sample(metrics.ALERTS_CORE_FALLBACK) == fallback + 3
        assert router.tenants[tenant_["id"]].publisher.belief == alerts.ABSENT


async def test_the_alerts_stream_is_the_bridges_name():
    assert ALERTS == alerts.ALERTS_STREAM == "ALERTS"
