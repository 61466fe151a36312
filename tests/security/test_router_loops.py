"""SPEC §11 "Loops": a rule that publishes where it listens cannot bounce messages forever.
Every message the router publishes carries `Cairn-Hops` (incoming + 1); at MAX_HOPS it is
not evaluated again, the drop is counted, and the rule's row says so (status stays valid).
A normal rule in the same tenant keeps firing; another tenant sees none of it."""

from __future__ import annotations

import pytest

from rule_router import metrics
from rule_router.hops import MAX_HOPS, limit_warning
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


@pytest.fixture(scope="module")
async def world(bridge, router_identity, admin, pb_env, nats_env):
    async with routed_tenants(admin, pb_env, nats_env, router_identity, 2) as (
            tenants, links, router):
        yield *tenants, *links, router


def _hops(msg) -> str | None:
    return (msg.headers or {}).get("Cairn-Hops")


async def _dropped_more_than(before: float) -> bool:
    return metrics.LOOP_DROPPED._value.get() > before


async def test_a_self_loop_stops_after_three_hops_and_its_row_says_so(world, admin):
    a, b, nc_a, nc_b, router = world
    topic = uid("loop")
    loop = await add_rule(admin, a, f"subject: alerts.{topic}.loop\n"
                                    f"actions:\n  - publish: alerts.{topic}.loop\n")
    normal = await add_rule(admin, a, f"subject: alerts.{topic}.ping\n"
                                      f"actions:\n  - publish: alerts.{topic}.pong\n")
    other = await add_rule(admin, b, f"subject: alerts.{topic}.loop\n"
                                     f"actions:\n  - publish: alerts.{topic}.seen-by-b\n")
    row = await row_with_status(admin, loop["id"], "valid")
    assert row["error"] == (f"line 3: warning: publishes to alerts.{topic}.loop, which its own "
                            f"subject filter alerts.{topic}.loop matches; the loop stops "
                            "after 3 hops")
    await row_with_status(admin, normal["id"], "valid")
    await row_with_status(admin, other["id"], "valid")
    seen = await collect(nc_a, f"alerts.{topic}.loop")
    pongs = await collect(nc_a, f"alerts.{topic}.pong")
    seen_by_b = await collect(nc_b, f"alerts.{topic}.seen-by-b")
    for tenant, filter_ in ((a, "loop"), (a, "ping"), (b, "loop")):
        await listening(router, tenant, f"alerts.{topic}.{filter_}")
    before = metrics.LOOP_DROPPED._value.get()

    await nc_a.publish(f"alerts.{topic}.loop", b'{"start": 1}')
    await eventually(lambda: _dropped_more_than(before), 10, "the hop limit reached")
    # the normal rule still fires, and its answer comes after the router dropped the loop
    await nc_a.publish(f"alerts.{topic}.ping", b"{}")
    await eventually(lambda: at_least(pongs, 1), 10, "the normal rule fires")
    await eventually(lambda: at_least(seen, MAX_HOPS + 1), 10, "the loop's messages")
    await nc_a.flush()  # published before the pong: nothing more can come
    assert [_hops(m) for m in seen] == [None, "1", "2", str(MAX_HOPS)]
    assert _hops(pongs[0]) == "1"
    assert seen_by_b == []  # another tenant's rule on the same subject saw nothing

    # the runtime warning joins the one from validation; the status stays valid
    expected = f"{row['error']}; {limit_warning(f'alerts.{topic}.loop')}"
    warned = await eventually(lambda: _error_is(admin, loop["id"], expected), 10)
    assert warned["status"] == "valid"
    await nc_b.publish(f"alerts.{topic}.loop", b"{}")  # control: B's own rule works
    await eventually(lambda: at_least(seen_by_b, 1), 10, "tenant B's rule fires")
    for r in (loop, normal, other):
        await admin.update("rules", r["id"], {"enabled": False})


async def test_a_hop_count_sent_by_anyone_is_honoured_and_cannot_be_reset(world, admin):
    a, _b, nc, _, router = world
    topic = uid("hops")
    rule = await add_rule(admin, a, f"subject: alerts.{topic}.in\n"
                                    f"actions:\n  - publish: alerts.{topic}.out\n")
    reset = await add_rule(admin, a, f"subject: alerts.{topic}.in\nactions:\n"
                                     f"  - publish: alerts.{topic}.out\n"
                                     "    headers: {Cairn-Hops: '0'}\n")
    bad = await row_with_status(admin, reset["id"], "invalid")
    assert bad["error"] == "line 4: actions[0].headers: Cairn-Hops is set by the router"
    await row_with_status(admin, rule["id"], "valid")
    out = await collect(nc, f"alerts.{topic}.out")
    await listening(router, a, f"alerts.{topic}.in")
    before = metrics.LOOP_DROPPED._value.get()
    await nc.publish(f"alerts.{topic}.in", b'{"n": 1}', headers={"Cairn-Hops": "3"})
    await eventually(lambda: _dropped_more_than(before), 10, "a message at the limit dropped")
    await nc.publish(f"alerts.{topic}.in", b'{"n": 2}', headers={"Cairn-Hops": "2"})
    await nc.publish(f"alerts.{topic}.in", b'{"n": 3}')
    await eventually(lambda: at_least(out, 2), 10, "the others are evaluated")
    await nc.flush()
    assert [(m.data, _hops(m)) for m in out] == [(b'{"n": 2}', "3"), (b'{"n": 3}', "1")]
    await admin.update("rules", rule["id"], {"enabled": False})


async def _error_is(admin, row_id: str, text: str):
    row = await admin.get("rules", row_id)
    return row if row["error"] == text else None
