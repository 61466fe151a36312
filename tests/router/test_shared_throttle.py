"""Throttle windows shared by two routers of one identity (rule_router/shared_throttle.py).

On the real stack (two in-process routers on one tenant, sharing its durable consumer):
a throttled rule fires once per window and subject however the messages are spread over
the routers, while an unthrottled rule on the same messages fires for every one (positive
control); another subject gets a window of its own; a window that ended opens again, and
its bucket entry goes with its TTL; a redelivered message whose first delivery opened the
window (and died before acting) still fires, once, on the other router; with the bucket
gone the routers fall back to their own windows, counted, and lose no message. The pure
parts (keys, TTLs, the local fallback) are checked without a server.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from nats.aio.msg import Msg

from pb_hooks_bridge.limits import MIB
from pb_hooks_bridge.streams import throttle_config
from rule_router import metrics, shared_throttle, tenant
from rule_router.ledger import delivery
from rule_router.shared_throttle import SharedThrottle, kv_key, ttl
from tests.live import eventually, uid
from tests.router.harness import (
    add_rule,
    at_least,
    collect,
    router_pair,
    row_with_status,
    rules_loaded,
    sample,
    stored_alerts,
    telemetry_consumer,
)

pytestmark = pytest.mark.timeout(150)


def _rule(kind: str, subject: str, throttle: str | None = None) -> str:
    text = (f'subject: "agents.*.telemetry.{kind}"\n'
            f"actions:\n  - publish: \"{subject}\"\n"
            "    payload: '{\"n\": {n}, \"device\": \"{@subject.1}\"}'\n")
    return text + (f"throttle: {throttle}\n" if throttle else "")


async def _rows(admin, tenant_: dict[str, Any], routers, kind: str, *texts: str) -> None:
    for text in texts:
        row = await add_rule(admin, tenant_, text)
        await row_with_status(admin, row["id"], "valid")
    await rules_loaded(routers, tenant_, f"agents.d1.telemetry.{kind}", len(texts))


async def _settled(nc, durable: str) -> bool:
    info = await telemetry_consumer(nc, durable)
    return info.num_ack_pending == 0 and info.num_pending == 0


def _counts(routers, tenant_) -> list[int]:
    """Messages each router has evaluated for this tenant so far."""
    return [r.tenants[tenant_["id"]]._count for r in routers]


async def _spread(js, subject: str, routers, tenant_, sent: list[int], each: int = 3) -> None:
    """Publish until both routers have evaluated at least `each` of these messages."""
    before = _counts(routers, tenant_)

    async def both() -> bool:
        for _ in range(4):
            await js.publish(subject, json.dumps({"n": len(sent)}).encode())
            sent.append(len(sent))
        return all(now - then >= each
                   for now, then in zip(_counts(routers, tenant_), before, strict=True))

    await eventually(both, 40, "messages spread over both routers")


async def _stored(nc, subject: str) -> list[dict[str, Any]]:
    return [json.loads(m.data) for m in await stored_alerts(nc, subject)]


async def test_two_routers_fire_once_per_window_and_subject(bridge, router_identity, admin,
                                                            pb_env, nats_env):
    async with router_pair(admin, pb_env, nats_env, router_identity) as (t, nc, routers):
        kind, topic = uid("thr"), uid("thr")
        await _rows(admin, t, routers, kind, _rule(kind, f"alerts.{topic}.once", "60s"),
                    _rule(kind, f"alerts.{topic}.all"))
        held = sample(metrics.THROTTLE, "held")
        js, sent = nc.jetstream(), []
        await _spread(js, f"agents.d1.telemetry.{kind}", routers, t, sent)
        await eventually(lambda: _settled(nc, router_identity.name), 20, "all acked")
        assert len(await _stored(nc, f"alerts.{topic}.all")) == len(sent)  # positive control
        once = await _stored(nc, f"alerts.{topic}.once")
        assert [a["device"] for a in once] == ["d1"], "fired more than once in its window"
        assert sample(metrics.THROTTLE, "held") >= held + len(sent) - 1
        # another subject: a window of its own (and only one)
        for n in range(3):
            await js.publish(f"agents.d2.telemetry.{kind}", json.dumps({"n": n}).encode())
        await eventually(lambda: _settled(nc, router_identity.name), 20, "all acked")
        assert len(await _stored(nc, f"alerts.{topic}.all")) == len(sent) + 3
        once = await _stored(nc, f"alerts.{topic}.once")
        assert sorted(a["device"] for a in once) == ["d1", "d2"]


async def test_a_window_that_ended_opens_again_and_its_entry_expires(
        bridge, router_identity, admin, pb_env, nats_env):
    async with router_pair(admin, pb_env, nats_env, router_identity) as (t, nc, routers):
        kind, topic = uid("end"), uid("end")
        await _rows(admin, t, routers, kind, _rule(kind, f"alerts.{topic}", "2s"))
        arrived: list[float] = []

        async def on_alert(_msg) -> None:
            arrived.append(time.monotonic())

        await nc.subscribe(f"alerts.{topic}", cb=on_alert)
        await nc.flush()
        js, sent, before = nc.jetstream(), 0, _counts(routers, t)

        async def two_windows() -> bool:
            nonlocal sent
            await js.publish(f"agents.d1.telemetry.{kind}", json.dumps({"n": sent}).encode())
            sent += 1
            return len(arrived) >= 2

        await eventually(two_windows, 30, "a second window")
        await eventually(lambda: _settled(nc, router_identity.name), 20, "all acked")
        assert len(await _stored(nc, f"alerts.{topic}")) == 2
        assert arrived[1] - arrived[0] >= 1.5, "fired again inside its 2 s window"
        assert sent >= 10  # messages in between were held
        assert all(now > then for now, then in zip(_counts(routers, t), before, strict=True))

        async def expired() -> bool:  # per-message TTL: window + TTL_SLACK
            info = await nc.jetstream().stream_info(shared_throttle.STREAM)
            return info.state.messages == 0
        await eventually(expired, 2 + shared_throttle.TTL_SLACK + 10, "the entry expired")


async def test_a_redelivery_of_the_message_that_opened_the_window_still_fires(
        bridge, router_identity, admin, pb_env, nats_env, monkeypatch):
    """Router A opens the window for message 1 and dies before acting (nothing acked, no
    record); message 2 is held by that window on router B, while message 1, redelivered
    to B after the ack wait, fires its action: once."""
    monkeypatch.setattr(tenant, "ACK_WAIT", 1.0)  # the consumer of the fresh tenant
    async with router_pair(admin, pb_env, nats_env, router_identity) as (t, nc, routers):
        kind, topic = uid("re"), uid("re")
        await _rows(admin, t, routers, kind, _rule(kind, f"alerts.{topic}", "60s"))
        runtimes = [r.tenants[t["id"]] for r in routers]
        crashed: list[Any] = []  # the runtime that died, the sequence it held
        acted: list[tuple[Any, int]] = []

        def dying(runtime):
            real = runtime.finish

            async def finish(msg, path, firings, redo=None) -> None:
                seq = (delivery(msg.reply) or (0, 0))[0]
                if not crashed:
                    crashed.extend([runtime, seq])
                    runtime.consumer.stop()  # takes nothing more
                    runtime.ledger.end(seq)  # and leaves no record behind
                    return
                acted.append((runtime, seq))
                await real(msg, path, firings, redo)
            return finish

        for runtime in runtimes:
            monkeypatch.setattr(runtime, "finish", dying(runtime))
        held, again = sample(metrics.THROTTLE, "held"), sample(metrics.THROTTLE, "redelivery")
        alerts = await collect(nc, f"alerts.{topic}")
        js = nc.jetstream()
        await js.publish(f"agents.d1.telemetry.{kind}", b'{"n": 1}')
        await eventually(lambda: at_least(crashed, 2), 10, "router A took message 1")
        dead = routers[runtimes.index(crashed[0])]
        await dead.stop()
        dead.stopped = True  # type: ignore[attr-defined]
        await js.publish(f"agents.d1.telemetry.{kind}", b'{"n": 2}')
        await eventually(lambda: at_least(alerts, 1), 20, "message 1 redelivered and fired")
        await eventually(lambda: _settled(nc, router_identity.name), 20, "all acked")
        assert [a["n"] for a in await _stored(nc, f"alerts.{topic}")] == [1]
        assert [seq for _, seq in acted] == [crashed[1]]  # only message 1 acted, once ...
        assert acted[0][0] is not crashed[0]  # ... by the other router
        assert sample(metrics.THROTTLE, "redelivery") == again + 1
        assert sample(metrics.THROTTLE, "held") >= held + 1  # message 2


async def test_without_the_bucket_routers_fall_back_and_lose_nothing(
        bridge, router_identity, admin, pb_env, nats_env, monkeypatch):
    monkeypatch.setattr(shared_throttle, "RETRY_AFTER", 0.2)  # try the bucket again soon
    async with router_pair(admin, pb_env, nats_env, router_identity) as (t, nc, routers):
        kind, topic = uid("fb"), uid("fb")
        await _rows(admin, t, routers, kind, _rule(kind, f"alerts.{topic}.once", "60s"),
                    _rule(kind, f"alerts.{topic}.all"))
        await nc.jetstream().delete_stream(shared_throttle.STREAM)  # as if unavailable
        fallback = sample(metrics.THROTTLE_FALLBACK)
        js, sent = nc.jetstream(), []
        await _spread(js, f"agents.d1.telemetry.{kind}", routers, t, sent)
        await eventually(lambda: _settled(nc, router_identity.name), 20, "all acked")
        assert len(await _stored(nc, f"alerts.{topic}.all")) == len(sent)
        assert 1 <= len(await _stored(nc, f"alerts.{topic}.once")) <= 2  # once per router
        assert sample(metrics.THROTTLE_FALLBACK) >= fallback + 2
        # once the bridge has made the bucket again, it decides again
        await js.add_stream(throttle_config(MIB))
        opened, devices = sample(metrics.THROTTLE, "opened"), iter(range(1000))

        async def shared_again() -> bool:
            await js.publish(f"agents.n{next(devices)}.telemetry.{kind}", b'{"n": 0}')
            return sample(metrics.THROTTLE, "opened") > opened

        await eventually(shared_again, 20, "the bucket used again")


# ------------------------------------------------------------------- pure, no server


def test_keys_are_valid_kv_keys_under_the_identity():
    key = kv_key("cairn-router", ("rules/abc#0", "agents.*.telemetry.>"))
    assert key.startswith("cairn-router.") and len(key) == len("cairn-router.") + 32
    assert shared_throttle.PREFIX + key == f"$KV.CAIRN_THROTTLE.{key}"
    assert all(c.isalnum() or c in "-." for c in key)
    assert kv_key("cairn-router", ("r#0", "a.b")) != kv_key("cairn-router", ("r#0", "a.c"))
    assert kv_key("cairn-router", ("r#0", "a.b")) != kv_key("cairn-other", ("r#0", "a.b"))


def test_ttl_covers_the_window_and_is_capped():
    assert ttl(0.5) == 1 + shared_throttle.TTL_SLACK
    assert ttl(300) == 300 + shared_throttle.TTL_SLACK
    assert ttl(10 * shared_throttle.MAX_WINDOW) == shared_throttle.MAX_WINDOW


async def test_without_a_connection_the_local_windows_decide():
    clock = [1000.0]
    shared = SharedThrottle("t", "cairn-router", lambda: None, clock=lambda: clock[0])
    fallback = sample(metrics.THROTTLE_FALLBACK)
    key = ("rules/x#0", "agents.d1.telemetry.system")
    assert await shared.acquire(key, 60, seq=7)  # opens a local window
    assert not await shared.acquire(key, 60, seq=8)  # another message: held
    assert await shared.acquire(key, 60, seq=7)  # its own redelivery passes
    assert not await shared.acquire(key, 60, seq=None)  # a core message is held
    gate = shared.gate("$JS.ACK.TELEMETRY.cairn-router.1.9.9.1700000000000000000.0")
    assert gate.seq == 9
    assert not gate.allow(key, 60) and gate.pending == {}  # held without a round trip
    assert gate.allow(("rules/x#0", "agents.d2.telemetry.system"), 60)  # other subject
    assert gate.allow(key, None)  # unthrottled rules pass untouched
    assert shared.gate("$JS.ACK.TELEMETRY.cairn-router.1.7.7.1700000000000000000.0").allow(
        key, 60)  # message 7's own redelivery, known here: passes to be confirmed
    clock[0] += 61
    assert await shared.acquire(key, 60, seq=8)  # the window is over
    assert sample(metrics.THROTTLE_FALLBACK) == fallback + 5


async def test_a_failed_bucket_is_left_alone_for_a_while():
    calls = 0

    def connection():
        nonlocal calls
        calls += 1
        return None

    shared = SharedThrottle("t", "cairn-router", connection)
    for n in range(5):
        await asyncio.wait_for(shared.acquire(("r#0", f"s.{n}"), 60, seq=n), 1)
    assert calls == 1  # one attempt, then RETRY_AFTER seconds of local decisions


async def test_a_forged_ack_reply_on_a_core_subject_does_not_pass_as_a_redelivery(
        bridge, router_identity, admin, pb_env, nats_env):
    """A device writes any reply subject it likes: every message of a core subject carries
    the same `$JS.ACK...` (as if it were the redelivery of the one that opened the window).
    The throttled rule still fires once; the unthrottled one (positive control) for each."""
    async with router_pair(admin, pb_env, nats_env, router_identity) as (t, nc, routers):
        kind, topic = uid("fa"), uid("fa")
        core = f"agents.*.events.{kind}"
        for text in (f'subject: "{core}"\nactions:\n  - publish: "alerts.{topic}.once"\n'
                     "throttle: 60s\n",
                     f'subject: "{core}"\nactions:\n  - publish: "alerts.{topic}.all"\n'):
            row = await add_rule(admin, t, text)
            await row_with_status(admin, row["id"], "valid")
        await rules_loaded(routers, t, f"agents.x.events.{kind}", 2)
        once, every = await collect(nc, f"alerts.{topic}.once"), await collect(
            nc, f"alerts.{topic}.all")
        forged = "$JS.ACK.TELEMETRY.forged.1.777.777.1700000000000000000.0"
        held = sample(metrics.THROTTLE, "held")
        redelivered = sample(metrics.THROTTLE, "redelivery")
        runtime = routers[0].tenants[t["id"]]
        for _ in range(5):  # as the core subscription hands them over (`_on_core`)
            msg = Msg(_client=runtime.nc, subject=f"agents.d1.events.{kind}", reply=forged,
                      data=b'{"n": 1}')
            await asyncio.create_task(runtime.handle(msg, "core"))
        await eventually(lambda: at_least(every, 5), 20, "every message routed")
        assert sample(metrics.THROTTLE, "held") == held + 4
        assert sample(metrics.THROTTLE, "redelivery") == redelivered
        assert len(once) == 1, f"the throttled rule fired {len(once)} times"


async def _router_nc(admin, nats_env, router_identity):
    """A tenant, and a connection of the router's own user in it (what a runtime has)."""
    from cairn_common.natsauth import service_inbox
    from tests.live import account_ready, connect, new_tenant
    from tests.router.harness import service_creds

    tenant_ = await account_ready(admin, await new_tenant(admin))

    async def issued():
        return router_identity.creds_for(await service_creds(admin, tenant_,
                                                             router_identity.name))
    jwt, seed = await eventually(issued, 10, "the router's JWT in the tenant")
    nc = await connect(nats_env.url, jwt, seed, inbox_prefix=service_inbox(router_identity.name))
    return tenant_, nc


async def _in_bucket(nc, identity: str, keys) -> int:
    js = nc.jetstream(timeout=2)
    found = 0
    for key in keys:
        try:
            await js.get_msg(shared_throttle.STREAM, subject=shared_throttle.PREFIX
                             + kv_key(identity, key), direct=True)
            found += 1
        except Exception:
            pass
    return found


@pytest.mark.parametrize("burst, asked", [(5, 5), (1000, 25)])
async def test_ever_new_subjects_ask_the_bucket_only_within_the_budget(
        bridge, router_identity, admin, nats_env, monkeypatch, burst, asked):
    """A device publishing on ever new telemetry subjects makes a new window each time:
    past the budget those are decided on the router's own windows (still once per window:
    the second message on each subject is held), and the bucket holds only the ones within
    it. Control: with room in the budget every window is in the bucket."""
    monkeypatch.setattr(shared_throttle, "KV_RATE", 0.001)  # no refill during the test
    monkeypatch.setattr(shared_throttle, "KV_BURST", burst)
    monkeypatch.setattr(shared_throttle, "SOURCE_BURST", 1000)  # the tenant's budget alone
    _, nc = await _router_nc(admin, nats_env, router_identity)
    try:
        shared = SharedThrottle("t", router_identity.name, lambda: nc)
        over = sample(metrics.THROTTLE_OVER_BUDGET)
        keys = [("rules/x#0", f"agents.d1.telemetry.{uid('s')}") for _ in range(25)]
        assert all([await shared.acquire(k, 60, seq=n) for n, k in enumerate(keys)])
        assert not any([await shared.acquire(k, 60, seq=100 + n)  # held, either way
                        for n, k in enumerate(keys)])
        assert sample(metrics.THROTTLE_OVER_BUDGET) - over == (50 - asked
                                                                if burst < 50 else 0)
        assert await _in_bucket(nc, router_identity.name, keys) == asked
    finally:
        await nc.close()


async def test_one_devices_flood_spends_its_own_budget_not_its_neighbours(
        bridge, router_identity, admin, nats_env, monkeypatch):
    """Device d1 opens 25 windows on ever new subjects: 5 reach the bucket (its own
    budget), the rest are decided here. Device d2, in the same tenant right after, still
    gets every one of its windows into the bucket (the control that the budget is per
    device, not the tenant's used up by d1)."""
    monkeypatch.setattr(shared_throttle, "SOURCE_RATE", 0.001)
    monkeypatch.setattr(shared_throttle, "SOURCE_BURST", 5)
    _, nc = await _router_nc(admin, nats_env, router_identity)
    try:
        shared = SharedThrottle("t", router_identity.name, lambda: nc)
        flood = [("rules/x#0", f"agents.d1.telemetry.{uid('s')}") for _ in range(25)]
        calm = [("rules/x#0", f"agents.d2.telemetry.{uid('s')}") for _ in range(3)]
        assert all([await shared.acquire(k, 60, seq=n) for n, k in enumerate(flood)])
        assert all([await shared.acquire(k, 60, seq=50 + n) for n, k in enumerate(calm)])
        assert await _in_bucket(nc, router_identity.name, flood) == 5
        assert await _in_bucket(nc, router_identity.name, calm) == 3
    finally:
        await nc.close()
