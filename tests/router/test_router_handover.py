"""A tenant runtime keeps its core messages and its tenants through what happens to its
links: a connection swap loses no core message (the new connection subscribes before the
old one's subscriptions are drained, not unsubscribed); a tenant whose runtime did not
start is tried again on its own, without any row event; a deleted tenant leaves no
credentials behind. Real PocketBase, NATS and router."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from rule_router import app
from rule_router.tenant import TenantRouter
from tests.live import account_ready, eventually, new_tenant, uid
from tests.router.harness import (
    add_rule,
    collect,
    listening,
    routed_tenants,
    row_with_status,
    sample,
)

pytestmark = pytest.mark.timeout(120)
BEFORE, DURING = 60, 100  # messages queued before the swap, and sent while it happens


async def test_a_connection_swap_loses_no_core_message(
        bridge, router_identity, admin, pb_env, nats_env, monkeypatch):
    async with routed_tenants(admin, pb_env, nats_env, router_identity) as (
            (tenant,), (nc,), router):
        topic, out = uid("ho"), uid("ho")
        row = await add_rule(admin, tenant, (
            f"subject: alerts.{topic}.in\n"
            f"actions:\n  - publish: alerts.{out}.seen\n    payload: '{{\"n\": {{n}}}}'\n"))
        await row_with_status(admin, row["id"], "valid")
        await listening(router, tenant, f"alerts.{topic}.in")
        runtime = router.tenants[tenant["id"]]
        heard = await collect(nc, f"alerts.{out}.seen")
        real, taken = runtime._spawn, []

        async def slow(msg, path):  # the old subscriptions hold a queue at the swap
            taken.append(msg)
            await asyncio.sleep(0.02)
            await real(msg, path)

        monkeypatch.setattr(runtime, "_spawn", slow)
        for n in range(BEFORE):
            await nc.publish(f"alerts.{topic}.in", json.dumps({"n": n}).encode())
        await nc.flush()
        await eventually(lambda: _true(bool(taken)), 10, "the router is taking them")
        old = runtime.nc

        async def meanwhile() -> None:
            for n in range(BEFORE, BEFORE + DURING):
                await nc.publish(f"alerts.{topic}.in", json.dumps({"n": n}).encode())
                await asyncio.sleep(0.005)
            await nc.flush()

        sending = asyncio.create_task(meanwhile())
        await runtime.link.replace("test: a planned swap")
        await sending
        wanted = set(range(BEFORE + DURING))

        async def all_heard() -> bool:
            return wanted <= {json.loads(m.data)["n"] for m in heard}

        try:
            await eventually(all_heard, 20, "every core message fires")
        except AssertionError:
            missing = wanted - {json.loads(m.data)["n"] for m in heard}
            raise AssertionError(f"{len(missing)} core messages lost in the swap") from None
        assert runtime.nc is not old
        assert all(sub._conn is runtime.nc for sub in runtime.core_subs.values())


async def test_a_tenant_whose_start_failed_is_routed_without_any_event(
        bridge, router_identity, admin, pb_env, nats_env, monkeypatch):
    monkeypatch.setattr(app, "RETRY_FIRST", 0.5)
    tenant = await account_ready(admin, await new_tenant(admin))
    real, failed = TenantRouter.start, []

    async def flaky(self) -> None:
        if self.slug == tenant["slug"] and not failed:
            failed.append(time.monotonic())
            raise TimeoutError("injected: NATS slower than CONNECT_WAIT")
        await real(self)

    monkeypatch.setattr(TenantRouter, "start", flaky)
    before = sample(app.START_FAILURES)
    # started bare, not through start_router: that waits for the full pass, by which time
    # the retry has already routed the tenant and the failed state is gone
    router = app.Router(pb_env.url, nats_env.url, router_identity)
    await router.start()
    try:
        await eventually(lambda: _true(bool(failed)), 30, "the first start fails")
        assert tenant["id"] not in router.tenants
        await eventually(lambda: _true(tenant["id"] in router.tenants
                                       and tenant["id"] not in router._retry), 10,
                         "routed again by the retry, no row event needed")
        assert time.monotonic() - failed[0] < 5
        assert router.tenants[tenant["id"]].link.connected
        assert sample(app.START_FAILURES) >= before + 1
        assert router.tasks[1].get_name() == "tenant-retry" and not router.tasks[1].done()
    finally:
        await router.stop()
    assert router.tasks[1].done()


async def test_a_deleted_tenant_leaves_no_credentials(
        bridge, router_identity, admin, pb_env, nats_env):
    async with routed_tenants(admin, pb_env, nats_env, router_identity) as (
            (tenant,), _links, router):
        assert tenant["id"] in router.creds
        await admin.delete("tenants", tenant["id"])
        await eventually(lambda: _true(tenant["id"] not in router.tenants), 15,
                         "its runtime stopped")
        # the cascade's nats_users events come after (a loaded box: seconds)
        await eventually(lambda: _true(tenant["id"] not in router.creds), 15,
                         "its credentials dropped")
        assert tenant["id"] not in router._retry


async def _true(value: bool) -> bool:
    return value
