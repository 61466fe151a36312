"""Exactly once per message, as far as the router can tell, with a short ack wait (1 s) on
a real JetStream consumer and a real HTTP server on 127.0.0.1:

- a webhook slower than the ack wait is kept alive (`in_progress`): one call, one dead
  letter, and the server never redelivers;
- a message whose ack was lost comes back and runs nothing again (`ledger.py`);
- a message whose actions partly failed comes back and runs only the missing ones, even
  inside its rule's throttle window.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from rule_router import acting, metrics, tenant
from rule_router.ledger import delivery
from tests.live import eventually, uid
from tests.router.harness import (
    HttpSink,
    Request,
    add_rule,
    at_least,
    collect,
    respond,
    routed_tenants,
    row_with_status,
    sample,
    telemetry_consumer,
)

pytestmark = pytest.mark.timeout(120)
ACK_WAIT = 1.0


@pytest.fixture
async def sink():
    server = await HttpSink().start()
    yield server
    await server.stop()


@pytest.fixture
def short_ack_wait(monkeypatch):
    monkeypatch.setattr(tenant, "ACK_WAIT", ACK_WAIT)  # the consumer of a fresh tenant
    monkeypatch.setattr(acting, "RETRY_DELAY", 0.3)
    monkeypatch.setenv("CAIRN_ROUTER_WEBHOOK_ALLOW", "127.0.0.1")


def _slow(seconds: float, status: int = 200):
    async def reply(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(seconds)
        await respond(status)(request, writer)
    return reply


def _deliveries(runtime, kind: str, monkeypatch) -> list[int]:
    """How many times each delivery of `kind` had been delivered, as the router took it."""
    seen: list[int] = []
    real = runtime._take

    async def take(msg) -> bool:
        if msg.subject.endswith(kind):
            seen.append((delivery(msg.reply) or (0, 0))[1])
        return await real(msg)

    monkeypatch.setattr(runtime, "_take", take)
    return seen


async def _send(nc, kind: str, doc: dict) -> None:
    await nc.jetstream().publish(f"agents.d1.telemetry.{kind}", json.dumps(doc).encode())


async def _settled(nc) -> bool:
    info = await telemetry_consumer(nc)
    return info.num_ack_pending == 0 and info.num_pending == 0


async def test_a_webhook_slower_than_the_ack_wait_runs_once(
        bridge, router_identity, admin, pb_env, nats_env, sink, short_ack_wait, monkeypatch):
    async with routed_tenants(admin, pb_env, nats_env, router_identity) as (
            (tenant_,), (nc,), router):
        kind = uid("slow")
        deliveries = _deliveries(router.tenants[tenant_["id"]], kind, monkeypatch)
        ok_rule = await add_rule(admin, tenant_, (
            f'subject: "agents.*.telemetry.{kind}"\nmatch: "ok == true"\n'
            f"actions:\n  - webhook: '{sink.url('/slow-ok')}'\n    timeout: 10\n"))
        bad_rule = await add_rule(admin, tenant_, (
            f'subject: "agents.*.telemetry.{kind}"\nmatch: "ok == false"\n'
            f"actions:\n  - webhook: '{sink.url('/slow-bad')}'\n    timeout: 10\n"
            "    retries: 3\n    backoff: 0.4\n"))
        for row in (ok_rule, bad_rule):
            await row_with_status(admin, row["id"], "valid")
        assert (await telemetry_consumer(nc)).config.ack_wait == ACK_WAIT
        dead = await collect(nc, "alerts.deadletter")

        async def reply(request: Request, writer: asyncio.StreamWriter) -> None:
            if request.path == "/slow-ok":
                await _slow(2.5)(request, writer)  # one attempt, 2.5 ack waits long
            else:
                await _slow(0.7, 500)(request, writer)  # 3 x 0.7 s + backoffs: ~3.3 s

        sink.reply = reply
        await _send(nc, kind, {"ok": True})
        await _send(nc, kind, {"ok": False})
        await eventually(lambda: at_least(dead, 1), 20, "the failing webhook's dead letter")
        await eventually(lambda: _settled(nc), 10, "both messages acked")
        await asyncio.sleep(2 * ACK_WAIT)  # room for a redelivery that must not come
        paths = sorted(r.path for r in sink.requests)
        assert paths == ["/slow-bad"] * 3 + ["/slow-ok"]
        assert len(dead) == 1 and json.loads(dead[0].data)["attempts"] == 3
        assert deliveries == [1, 1], "a message in progress was delivered again"
        assert router.tenants[tenant_["id"]].live_ack_wait == ACK_WAIT


async def test_a_lost_ack_brings_the_message_back_and_nothing_runs_twice(
        bridge, router_identity, admin, pb_env, nats_env, sink, short_ack_wait,
        monkeypatch):
    async with routed_tenants(admin, pb_env, nats_env, router_identity) as (
            (tenant_,), (nc,), router):
        kind, topic = uid("lost"), uid("lost")
        row = await add_rule(admin, tenant_, (
            f'subject: "agents.*.telemetry.{kind}"\n'
            f"actions:\n  - publish: alerts.{topic}\n  - webhook: '{sink.url('/once')}'\n"))
        await row_with_status(admin, row["id"], "valid")
        alerts = await collect(nc, f"alerts.{topic}")
        runtime = router.tenants[tenant_["id"]]
        deliveries = _deliveries(runtime, kind, monkeypatch)
        real, dropped = runtime._ack, []

        async def lossy(msg) -> None:
            if msg.subject.endswith(kind) and not dropped:
                dropped.append(msg)  # as if the connection died with the ack in its buffer
                return
            await real(msg)

        monkeypatch.setattr(runtime, "_ack", lossy)
        skipped = sample(metrics.REDELIVERIES, "skipped")
        await _send(nc, kind, {"n": 1})
        await eventually(lambda: at_least(dropped, 1), 10, "the ack dropped")
        await eventually(lambda: at_least(deliveries, 2), 10, "the server delivers it again")
        await eventually(lambda: _settled(nc), 10, "acked the second time")
        await asyncio.sleep(0.5)
        assert deliveries == [1, 2]
        assert len(alerts) == 1 and len(sink.requests) == 1
        assert sample(metrics.REDELIVERIES, "skipped") == skipped + 1


async def test_a_partial_failure_reruns_only_the_missing_action(
        bridge, router_identity, admin, pb_env, nats_env, sink, short_ack_wait,
        monkeypatch):
    async with routed_tenants(admin, pb_env, nats_env, router_identity) as (
            (tenant_,), (nc,), router):
        kind, topic = uid("part"), uid("part")
        row = await add_rule(admin, tenant_, (
            f'subject: "agents.*.telemetry.{kind}"\nthrottle: 1h\n'
            f"actions:\n  - publish: alerts.{topic}\n"
            f"  - webhook: '{sink.url('/a')}'\n"
            f"  - webhook: '{sink.url('/b')}'\n    retries: 1\n"))
        await row_with_status(admin, row["id"], "valid")
        alerts = await collect(nc, f"alerts.{topic}")
        runtime = router.tenants[tenant_["id"]]
        b_calls = 0

        async def reply(request: Request, writer: asyncio.StreamWriter) -> None:
            nonlocal b_calls
            if request.path == "/b":
                b_calls += 1
                await respond(500 if b_calls == 1 else 200)(request, writer)
            else:
                await respond(200)(request, writer)

        sink.reply = reply
        real, refused = runtime._deadletter, []

        async def refusing(*args, **kwargs) -> bool:
            if not refused:  # NATS refused /b's dead letter: the message must come back
                refused.append(args)
                return False
            return await real(*args, **kwargs)

        monkeypatch.setattr(runtime, "_deadletter", refusing)
        deliveries = _deliveries(runtime, kind, monkeypatch)
        resumed = sample(metrics.REDELIVERIES, "resumed")
        skipped = sample(metrics.ACTIONS_SKIPPED)
        await _send(nc, kind, {"n": 1})
        await eventually(lambda: _path_count(sink, "/b", 2), 15, "/b called again")
        await eventually(lambda: _settled(nc), 10, "acked after the redelivery")
        await asyncio.sleep(0.5)
        assert deliveries == [1, 2]
        assert sorted(r.path for r in sink.requests) == ["/a", "/b", "/b"]
        # each action's calls for this message carry one Idempotency-Key, its own
        keys = {r.path: set() for r in sink.requests}
        for r in sink.requests:
            keys[r.path].add(r.headers.get("idempotency-key"))
        assert all(len(v) == 1 and None not in v for v in keys.values()), keys
        assert keys["/a"] != keys["/b"]
        assert len(alerts) == 1 and len(refused) == 1
        assert sample(metrics.REDELIVERIES, "resumed") == resumed + 1
        assert sample(metrics.ACTIONS_SKIPPED) == skipped + 2  # the publish and /a
        # the throttle window the first delivery opened still holds for new messages
        await _send(nc, kind, {"n": 2})
        await asyncio.sleep(1.0)
        assert len(sink.requests) == 3 and len(alerts) == 1


async def _path_count(sink: HttpSink, path: str, n: int) -> bool:
    return sum(r.path == path for r in sink.requests) >= n
