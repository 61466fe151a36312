"""Core subscriptions are one queue group per router identity: a core message is
evaluated once, whether the rules' filters overlap (two subscriptions of one connection
match it), or two connections of the same router are up at once (one replacing the
other, or a second process of the same identity). And a runtime whose connection object
is replaced carries on on the new one. Real PocketBase, NATS and router."""

from __future__ import annotations

import asyncio
import json

import pytest

from rule_router.tenant import TenantRouter
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


def _rules(topic: str, out: str) -> str:
    return (f"- subject: alerts.{topic}.*.in\n  actions:\n    - publish: alerts.{out}.one\n"
            f"- subject: alerts.{topic}.x.*\n  actions:\n    - publish: alerts.{out}.two\n")


async def test_overlapping_filters_evaluate_a_message_once(
        bridge, router_identity, admin, pb_env, nats_env):
    async with routed_tenants(admin, pb_env, nats_env, router_identity) as (
            (tenant,), (nc,), router):
        topic, out = uid("ov"), uid("ov")
        row = await add_rule(admin, tenant, _rules(topic, out))
        await row_with_status(admin, row["id"], "valid")
        for subject in (f"alerts.{topic}.*.in", f"alerts.{topic}.x.*"):
            await listening(router, tenant, subject)
        heard = await collect(nc, f"alerts.{out}.*")
        for _ in range(3):
            await nc.publish(f"alerts.{topic}.x.in", b"{}")  # both filters match
        await eventually(lambda: at_least(heard, 6), 10, "both rules fire")
        await asyncio.sleep(0.5)
        assert sorted(m.subject.rsplit(".", 1)[1] for m in heard) == ["one"] * 3 + ["two"] * 3


async def test_two_connections_of_one_router_evaluate_a_message_once(
        bridge, router_identity, admin, pb_env, nats_env):
    async with routed_tenants(admin, pb_env, nats_env, router_identity) as (
            (tenant,), (nc,), router):
        topic, out = uid("two"), uid("two")
        row = await add_rule(admin, tenant, _rules(topic, out))
        await row_with_status(admin, row["id"], "valid")
        await listening(router, tenant, f"alerts.{topic}.*.in")
        first = router.tenants[tenant["id"]]
        # the same identity, the same tenant, a connection of its own (as while a
        # supervised connection replaces the old one, or a second router process)
        # (asking for another ack wait changes nothing: the durable keeps its own, and the
        # runtime keeps a message alive by the one the durable has)
        second = TenantRouter(first.slug, nats_env.url, first.creds, None, user=first.user,
                              ack_wait=7.0)
        second.ruleset = first.ruleset
        await second.start()
        try:
            await eventually(lambda: _equals(lambda: second.live_ack_wait,
                                             first.live_ack_wait), 10, "the durable's ack wait")
            assert second.ack_wait == 7.0 != second.live_ack_wait
            assert set(second.core_subs) == set(first.core_subs)
            await second.nc.flush()
            heard = await collect(nc, f"alerts.{out}.*")
            for _ in range(10):
                await nc.publish(f"alerts.{topic}.x.in", b"{}")
            await eventually(lambda: at_least(heard, 20), 10, "the rules fire")
            await asyncio.sleep(0.5)
            assert len(heard) == 20  # 10 messages x 2 rules, not twice that
        finally:
            await second.stop()


async def _equals(get, value) -> bool:
    return get() == value


async def test_a_swapped_connection_is_picked_up_by_both_paths(
        bridge, router_identity, admin, pb_env, nats_env):
    async with routed_tenants(admin, pb_env, nats_env, router_identity) as (
            (tenant,), (nc,), router):
        topic, out, kind = uid("sw"), uid("sw"), uid("sw")
        row = await add_rule(admin, tenant, _rules(topic, out) + (
            f"- subject: agents.*.telemetry.{kind}\n"
            f"  actions:\n    - publish: alerts.{out}.js\n"))
        await row_with_status(admin, row["id"], "valid")
        await listening(router, tenant, f"alerts.{topic}.*.in")
        runtime = router.tenants[tenant["id"]]
        old = runtime.nc
        await old.close()  # closed under it (as the server does): the link opens another
        await eventually(lambda: _true(runtime.nc is not old and runtime.link.connected), 15,
                         "the supervised link reopened")
        heard = await collect(nc, f"alerts.{out}.*")

        async def both_paths() -> bool:
            await nc.publish(f"alerts.{topic}.y.in", b"{}")
            await nc.jetstream().publish(f"agents.d1.telemetry.{kind}", json.dumps({}).encode())
            await asyncio.sleep(0.2)
            return {m.subject.rsplit(".", 1)[1] for m in heard} >= {"one", "js"}

        await eventually(both_paths, 15, "core and telemetry rules fire on the new connection")
        assert runtime.consumer.bound is runtime.nc
        assert all(sub._conn is runtime.nc for sub in runtime.core_subs.values())


async def _true(value: bool) -> bool:
    return value
