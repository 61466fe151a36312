"""SPEC §11 "Replies and subjects", the router's part: nobody makes the server forge a
message into a rule's subject. Anyone with JetStream API rights may give a request any
reply subject, and the server then publishes its answer there — a direct-get result
(someone's stored message, with Nats-Stream/Subject/Sequence/Time-Stamp headers), a 404
status message, a PubAck, an API response. The router drops those before evaluation, on
core subjects and on telemetry (where the answer is stored and comes back through the
durable consumer). Positive controls: ordinary alerts and JetStream telemetry still fire,
and what a pull consumer delivers carries none of those headers."""

from __future__ import annotations

import json

import pytest

from rule_router.replies import server_answer
from tests.live import eventually, uid
from tests.router.harness import (
    add_rule,
    at_least,
    collect,
    listening,
    routed_tenants,
    row_with_status,
)

pytestmark = pytest.mark.timeout(120)
DIRECT_GET = "$JS.API.DIRECT.GET.TELEMETRY"
MSG_GET = "$JS.API.STREAM.MSG.GET.TELEMETRY"


@pytest.fixture(scope="module")
async def world(bridge, router_identity, admin, pb_env, nats_env):
    async with routed_tenants(admin, pb_env, nats_env, router_identity) as (
            tenants, links, router):
        yield tenants[0], router, links[0]


async def _dropped(runtime, n: int) -> bool:
    return runtime.guards.dropped["server-reply"] >= n


async def test_server_answers_aimed_at_rule_subjects_are_not_evaluated(world, admin):
    tenant, router, nc = world
    runtime = router.tenants[tenant["id"]]
    topic = uid("rep")
    alerts = await add_rule(admin, tenant, f"subject: alerts.{topic}.in\n"
                                           f"actions: [{{publish: alerts.{topic}.out}}]\n")
    telemetry = await add_rule(admin, tenant, f"subject: agents.*.telemetry.{topic}\n"
                                              f"actions: [{{publish: alerts.{topic}.js}}]\n")
    for row in (alerts, telemetry):
        await row_with_status(admin, row["id"], "valid")
    out = await collect(nc, f"alerts.{topic}.out")
    from_js = await collect(nc, f"alerts.{topic}.js")
    await listening(router, tenant, f"alerts.{topic}.in")
    js = nc.jetstream()
    seed = f"agents.d1.telemetry.{topic}-seed"  # no rule listens here
    await js.publish(seed, b'{"cpu_percent": 99}')
    before = runtime.guards.dropped["server-reply"]

    # core path: each request's answer lands on the rule's subject
    target = f"alerts.{topic}.in"
    await nc.publish(DIRECT_GET, json.dumps({"last_by_subj": seed}).encode(), reply=target)
    await nc.publish(DIRECT_GET, b'{"seq": 999999999}', reply=target)  # 404 status message
    await nc.publish(MSG_GET, json.dumps({"last_by_subj": seed}).encode(), reply=target)
    await nc.publish(seed, b'{"again": 1}', reply=target)  # the stream's PubAck
    await eventually(lambda: _dropped(runtime, before + 4), 10, "four answers dropped")

    # JetStream path: answers into a telemetry subject are stored, then delivered
    await nc.publish(DIRECT_GET, json.dumps({"last_by_subj": seed}).encode(),
                     reply=f"agents.d2.telemetry.{topic}")
    await nc.publish(seed, b'{"again": 2}', reply=f"agents.d3.telemetry.{topic}")
    await eventually(lambda: _dropped(runtime, before + 6), 15, "stored answers dropped")

    # positive controls: an alert and a device's telemetry (with a header of its own)
    await nc.publish(target, b'{"real": "alert"}')
    await js.publish(f"agents.d4.telemetry.{topic}", b'{"real": "telemetry"}',
                     headers={"Nats-Msg-Id": uid("m")})
    await eventually(lambda: at_least(out, 1), 10, "the alert rule fires")
    await eventually(lambda: at_least(from_js, 1), 15, "the telemetry rule fires")
    await nc.flush()
    assert [m.data for m in out] == [b'{"real": "alert"}']
    assert [m.data for m in from_js] == [b'{"real": "telemetry"}']
    assert runtime.guards.dropped["server-reply"] == before + 6
    for row in (alerts, telemetry):
        await admin.update("rules", row["id"], {"enabled": False})


async def test_a_pull_consumer_delivers_only_the_stored_headers(world):
    """What the router's durable consumer hands nats-py: the device's own headers; stream
    and sequence are in the ack reply (`msg.metadata`). A stored server answer keeps the
    server's headers, which is how the router knows it."""
    _tenant, _router, nc = world
    js = nc.jetstream()
    topic = uid("pull")
    device = f"agents.d1.telemetry.{topic}"
    # (not Nats-Msg-Id: the answer repeats the stored headers, and the stream would drop
    # it as a duplicate)
    await js.publish(device, b'{"cpu_percent": 1}', headers={"X-Agent": "d1"})
    await nc.publish(DIRECT_GET, json.dumps({"last_by_subj": device}).encode(),
                     reply=f"agents.d2.telemetry.{topic}")
    sub = await js.pull_subscribe(f"agents.*.telemetry.{topic}", stream="TELEMETRY")
    got: list = []

    async def fetched() -> bool:
        try:
            got.extend(await sub.fetch(2 - len(got), timeout=1))
        except TimeoutError:
            pass
        return len(got) >= 2

    await eventually(fetched, 15, "both stored messages")
    real, answer = sorted(got, key=lambda m: m.metadata.sequence.stream)
    assert real.headers == {"X-Agent": "d1"}
    assert real.metadata.stream == "TELEMETRY" and real.reply.startswith("$JS.ACK.")
    assert server_answer(real.headers, real.data) is None
    assert {"Nats-Stream", "Nats-Subject", "Nats-Sequence"} <= set(answer.headers)
    assert server_answer(answer.headers, answer.data) is not None
    await sub.unsubscribe()
