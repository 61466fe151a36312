"""SPEC §11 "Loops", breadth: one rule cannot turn the shared router into an amplifier.
The hop limit caps depth only: a rule on `alerts.amp.>` with 10 publishes into
`alerts.amp.x0..x9` made 1111 messages of one. Now one message causes at most MAX_OUTPUTS
messages in all (the `Cairn-Budget` header splits it among what it causes), and a tenant
whose rules publish past PUBLISH_RATE (bursts of PUBLISH_BURST) has the rest dropped —
counted, acked, reported in the rule's row — while another tenant's rule keeps firing."""

from __future__ import annotations

import pytest

from rule_router.fanout import (
    MAX_OUTPUTS,
    PUBLISH_BURST,
    PublishBudget,
    fanout_warning,
    throttle_warning,
)
from tests.live import eventually, uid
from tests.router.harness import (
    add_rule,
    at_least,
    collect,
    listening,
    routed_tenants,
    row_with_status,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
async def world(bridge, router_identity, admin, pb_env, nats_env):
    async with routed_tenants(admin, pb_env, nats_env, router_identity, 2) as (
            tenants, links, router):
        yield *tenants, *links, router


def _fan(listen: str, into: str, width: int = 10) -> str:
    return f"subject: {listen}\nactions:\n" + "".join(
        f"  - publish: {into}{i}\n" for i in range(width))


async def _reached(get, n: int) -> bool:
    return get() >= n


async def _row_error(admin, row_id: str, check):
    row = await admin.get("rules", row_id)
    return row if check(row["error"]) else None


async def test_one_message_causes_at_most_the_output_budget(world, admin):
    a, b, nc_a, nc_b, router = world
    topic = uid("amp")
    amp = await add_rule(admin, a, _fan(f"alerts.{topic}.amp.>", f"alerts.{topic}.amp.x."))
    ping = await add_rule(admin, b, f"subject: alerts.{topic}.ping\n"
                                    f"actions: [{{publish: alerts.{topic}.pong}}]\n")
    validated = (await row_with_status(admin, amp["id"], "valid"))["error"]
    await row_with_status(admin, ping["id"], "valid")
    made = await collect(nc_a, f"alerts.{topic}.amp.x.*")
    pongs = await collect(nc_b, f"alerts.{topic}.pong")
    await listening(router, a, f"alerts.{topic}.amp.>")
    await listening(router, b, f"alerts.{topic}.ping")
    guards = router.tenants[a["id"]].guards
    before = guards.dropped["fanout"]

    await nc_a.publish(f"alerts.{topic}.amp.in", b"{}")
    # hop 1: 10 messages with a budget of 9 each; each wants 10: 9 go, 1 is dropped;
    # hop 2: 90 messages with a budget of 0: all 900 they want are dropped
    await eventually(lambda: _reached(lambda: guards.dropped["fanout"], before + 910), 20,
                     "the whole tree handled")
    await eventually(lambda: at_least(made, MAX_OUTPUTS), 10, "the budget's messages")
    await nc_a.flush()
    assert len(made) == MAX_OUTPUTS == 100  # was 1110
    by_hop = sorted((m.headers["Cairn-Hops"], m.headers["Cairn-Budget"]) for m in made)
    assert by_hop == [("1", "9")] * 10 + [("2", "0")] * 90
    assert guards.dropped["throttled"] == 0  # the tenant's rate was never the limit

    # the row keeps its validation warnings and says what happened; status stays valid
    expected = {f"{validated}; {fanout_warning(f'alerts.{topic}.amp.x.{i}')}"
                for i in range(10)}  # whichever hop-1 message was first to run out
    warned = await eventually(lambda: _row_error(admin, amp["id"], expected.__contains__),
                              10, "the fan-out warning")
    assert warned["status"] == "valid" and "Cairn-Budget limit" in warned["error"]
    # positive control: another tenant's rule answers at once
    await nc_b.publish(f"alerts.{topic}.ping", b"{}")
    await eventually(lambda: at_least(pongs, 1), 10, "tenant B's rule fires")
    for row in (amp, ping):
        await admin.update("rules", row["id"], {"enabled": False})


async def test_a_tenant_past_its_rate_is_throttled_while_another_keeps_firing(world, admin):
    a, b, nc_a, nc_b, router = world
    topic = uid("flood")
    flood = await add_rule(admin, a, _fan(f"alerts.{topic}.in", f"alerts.{topic}.out."))
    steady = await add_rule(admin, b, f"subject: alerts.{topic}.b-in\n"
                                      f"actions: [{{publish: alerts.{topic}.b-out}}]\n")
    js_rule = await add_rule(admin, a, f"subject: agents.*.telemetry.{topic}\n"
                                       f"actions: [{{publish: alerts.{topic}.js}}]\n")
    for row in (flood, steady, js_rule):
        assert (await row_with_status(admin, row["id"], "valid"))["error"] == ""
    flooded = await collect(nc_a, f"alerts.{topic}.out.*")
    answered = await collect(nc_b, f"alerts.{topic}.b-out")
    from_js = await collect(nc_a, f"alerts.{topic}.js")
    await listening(router, a, f"alerts.{topic}.in")
    await listening(router, b, f"alerts.{topic}.b-in")
    runtime_a, runtime_b = router.tenants[a["id"]], router.tenants[b["id"]]
    now = [0.0]  # A's bucket: the real rate and burst, on a clock that stands still
    runtime_a.guards.budget = PublishBudget(clock=lambda: now[0])
    fanout_before = runtime_a.guards.dropped["fanout"]
    inputs, b_messages = 250, 200  # A wants 2500 publishes within one instant

    for i in range(inputs):
        await nc_a.publish(f"alerts.{topic}.in", b"{}")
        if i % 5 == 0:
            for _ in range(4):
                await nc_b.publish(f"alerts.{topic}.b-in", b"{}")
    await eventually(lambda: _reached(lambda: runtime_a.guards.dropped["throttled"],
                                      inputs * 10 - PUBLISH_BURST), 30, "A throttled")
    await eventually(lambda: at_least(answered, b_messages), 30, "every B message answered")
    await eventually(lambda: at_least(flooded, PUBLISH_BURST), 10, "A's burst delivered")
    await nc_a.flush()
    assert len(flooded) == PUBLISH_BURST  # and not one more: the bucket is empty
    assert runtime_a.guards.dropped["fanout"] == fanout_before  # each within its budget
    assert runtime_b.guards.dropped == {"fanout": 0, "throttled": 0, "server-reply": 0,
                                        "hop-limit": 0}
    warned = await eventually(lambda: _row_error(admin, flood["id"],
                                                 lambda e: e == throttle_warning()), 10)
    assert warned["status"] == "valid"

    # a JetStream message whose publishes were all dropped is acked, not redelivered
    js = nc_a.jetstream()
    ack = await js.publish(f"agents.d1.telemetry.{topic}", b'{"n": 1}')
    dropped = runtime_a.guards.dropped["throttled"]
    await eventually(lambda: _reached(lambda: runtime_a.guards.dropped["throttled"],
                                      dropped + 1), 15, "the telemetry rule throttled")
    await eventually(lambda: _acked(js, router.identity.name, ack.seq), 10, "acked")

    # positive control: time moves on, the bucket refills, A's rules fire again
    now[0] += 10.0
    await nc_a.publish(f"alerts.{topic}.in", b"{}")
    await js.publish(f"agents.d1.telemetry.{topic}", b'{"n": 2}')
    await eventually(lambda: at_least(flooded, PUBLISH_BURST + 10), 10, "A fires again")
    await eventually(lambda: at_least(from_js, 1), 15, "A's telemetry rule fires again")
    assert [m.data for m in from_js] == [b'{"n": 2}']
    runtime_a.guards.budget = PublishBudget()
    for row in (flood, steady, js_rule):
        await admin.update("rules", row["id"], {"enabled": False})


async def _acked(js, durable: str, seq: int) -> bool:
    info = await js.consumer_info("TELEMETRY", durable)
    return (info.ack_floor.stream_seq >= seq and info.num_ack_pending == 0
            and info.num_redelivered == 0)
