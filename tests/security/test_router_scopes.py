"""SPEC §11 "Secrets" and "Outbound", across tenants: what the MSP opens for tenant A is
A's. `CAIRN_ROUTER_ENV_ALLOW` and `CAIRN_ROUTER_WEBHOOK_ALLOW` entries written `slug:...`
apply to the tenant with that slug only, at validation (the row is judged as its tenant's)
and at run time (each tenant renders with its own names and connects through its own
client). Tenant B's identical rule is refused with the message of an entry that does not
exist; A's rule works (positive control), and so do bare entries, in both tenants."""

from __future__ import annotations

import json

import pytest

from tests.live import account_ready, connect, eventually, new_tenant, uid
from tests.router.harness import (
    HttpSink,
    add_rule,
    at_least,
    collect,
    listening,
    row_with_status,
    service_creds,
    start_router,
)

pytestmark = pytest.mark.timeout(120)
A_TOKEN = "a-only-token"
RENAMED = uid("t")  # the slug tenant C will get
ENV_REFUSED = ("line 4: actions[0].payload: ${{{name}}} is not allowed: list it in "
               "CAIRN_ROUTER_ENV_ALLOW")
HOOK_REFUSED = ("line 3: actions[0].webhook: refused: 127.0.0.1 is not a public address "
                "(loopback); webhooks may reach it only if CAIRN_ROUTER_WEBHOOK_ALLOW lists it")


@pytest.fixture(scope="module")
async def world(bridge, router_identity, admin, pb_env, nats_env):
    a = await account_ready(admin, await new_tenant(admin))
    b = await account_ready(admin, await new_tenant(admin))
    c = await account_ready(admin, await new_tenant(admin))
    sink = await HttpSink().start()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CAIRN_TEST_A_TOKEN", A_TOKEN)
        env.setenv("CAIRN_TEST_SHARED", "shared-value")
        env.setenv("CAIRN_TEST_C_TOKEN", "c-token")
        env.setenv("CAIRN_ROUTER_ENV_ALLOW", f"CAIRN_TEST_SHARED, {a['slug']}:CAIRN_TEST_A_TOKEN,"
                                             f" {RENAMED}:CAIRN_TEST_C_TOKEN")
        env.setenv("CAIRN_ROUTER_WEBHOOK_ALLOW", f"{a['slug']}:127.0.0.1")
        router = await start_router(pb_env, nats_env, admin, [a, b, c], router_identity)
        links = []
        for tenant in (a, b, c):
            svc = await service_creds(admin, tenant)
            links.append(await connect(nats_env.url, svc["jwt"], svc["seed"]))
        yield a, b, c, *links, router, sink
        for nc in links:
            await nc.close()
        await router.stop()
        await sink.stop()


def _payload_rule(topic: str, name: str) -> str:
    return (f"subject: alerts.{topic}.in\nactions:\n  - publish: alerts.{topic}.out\n"
            f"    payload: '{{\"t\": \"${{{name}}}\"}}'\n")


async def test_a_name_scoped_to_a_is_invalid_in_b_like_an_unlisted_one(world, admin):
    a, b, _c, nc_a, nc_b, _nc_c, router, _sink = world
    topic = uid("scope")
    mine = await add_rule(admin, a, _payload_rule(topic, "CAIRN_TEST_A_TOKEN"))
    stolen = await add_rule(admin, b, _payload_rule(topic, "CAIRN_TEST_A_TOKEN"))
    unlisted = await add_rule(admin, b, _payload_rule(topic, "CAIRN_TEST_NOT_LISTED"))
    shared = await add_rule(admin, b, _payload_rule(topic, "CAIRN_TEST_SHARED"))
    bad = await row_with_status(admin, stolen["id"], "invalid")
    assert bad["error"] == ENV_REFUSED.format(name="CAIRN_TEST_A_TOKEN")
    other = await row_with_status(admin, unlisted["id"], "invalid")
    assert other["error"] == ENV_REFUSED.format(name="CAIRN_TEST_NOT_LISTED")
    assert (await row_with_status(admin, mine["id"], "valid"))["error"] == ""
    await row_with_status(admin, shared["id"], "valid")  # bare: every tenant's
    out_a = await collect(nc_a, f"alerts.{topic}.out")
    out_b = await collect(nc_b, f"alerts.{topic}.out")
    await listening(router, a, f"alerts.{topic}.in")
    await listening(router, b, f"alerts.{topic}.in")
    await nc_a.publish(f"alerts.{topic}.in", b"{}")
    await nc_b.publish(f"alerts.{topic}.in", b"{}")
    await eventually(lambda: at_least(out_a, 1), 10, "A's rule fires")
    await eventually(lambda: at_least(out_b, 1), 10, "B's shared rule fires")
    await nc_b.flush()
    assert [m.data for m in out_a] == [b'{"t": "a-only-token"}']
    assert [m.data for m in out_b] == [b'{"t": "shared-value"}']
    assert A_TOKEN not in json.dumps([await admin.get("rules", r["id"])
                                      for r in (stolen, unlisted)])
    for row in (mine, shared):
        await admin.update("rules", row["id"], {"enabled": False})


async def test_a_webhook_address_scoped_to_a_is_refused_for_b(world, admin):
    a, b, _c, nc_a, nc_b, _nc_c, router, sink = world
    topic = uid("hook")
    literal = f"subject: alerts.{topic}.lit\nactions:\n  - webhook: '{sink.url('/lit')}'\n"
    mine = await add_rule(admin, a, literal)
    theirs = await add_rule(admin, b, literal)
    bad = await row_with_status(admin, theirs["id"], "invalid")
    assert bad["error"] == HOOK_REFUSED  # the very message of an unlisted address
    await row_with_status(admin, mine["id"], "valid")
    # a host known only at render time is judged at connect time, by the tenant's client
    templated = (f"subject: alerts.{topic}.tpl\nactions:\n"
                 "  - webhook: 'http://{host}:{port}/{who}'\n")
    rows = [await add_rule(admin, t, templated) for t in (a, b)]
    for row in rows:
        await row_with_status(admin, row["id"], "valid")
    dead_a = await collect(nc_a, "alerts.deadletter")
    dead_b = await collect(nc_b, "alerts.deadletter")
    for tenant, nc, who in ((a, nc_a, "a"), (b, nc_b, "b")):
        await listening(router, tenant, f"alerts.{topic}.tpl")
        await nc.publish(f"alerts.{topic}.tpl", json.dumps(
            {"host": "127.0.0.1", "port": sink.port, "who": who}).encode())
    await listening(router, a, f"alerts.{topic}.lit")
    await nc_a.publish(f"alerts.{topic}.lit", b"{}")
    await eventually(lambda: at_least(dead_b, 1), 10, "B's call dead-lettered")
    await eventually(lambda: at_least(sink.requests, 2), 10, "A's calls arrive")
    assert json.loads(dead_b[0].data)["error"] == HOOK_REFUSED.split("webhook: ", 1)[1]
    assert sorted(r.path for r in sink.requests) == ["/a", "/lit"]
    assert dead_a == []
    for row in (mine, *rows):
        await admin.update("rules", row["id"], {"enabled": False})


async def test_a_tenant_whose_slug_changes_is_judged_under_the_new_one(world, admin):
    _a, _b, c, _nc_a, _nc_b, nc_c, router, _sink = world
    topic = uid("rename")
    row = await add_rule(admin, c, _payload_rule(topic, "CAIRN_TEST_C_TOKEN"))
    bad = await row_with_status(admin, row["id"], "invalid")  # listed for RENAMED only
    assert bad["error"] == ENV_REFUSED.format(name="CAIRN_TEST_C_TOKEN")
    await admin.update("tenants", c["id"], {"slug": RENAMED})
    await row_with_status(admin, row["id"], "valid")  # validated again, as RENAMED's
    await eventually(lambda: _slug_is(router, c["id"], RENAMED), 10, "runtime restarted")
    out = await collect(nc_c, f"alerts.{topic}.out")
    await listening(router, c, f"alerts.{topic}.in")
    await nc_c.publish(f"alerts.{topic}.in", b"{}")
    await eventually(lambda: at_least(out, 1), 10, "the rule renders under the new slug")
    assert [m.data for m in out] == [b'{"t": "c-token"}']
    await admin.update("rules", row["id"], {"enabled": False})


async def _slug_is(router, tenant_id: str, slug: str) -> bool:
    runtime = router.tenants.get(tenant_id)
    return runtime is not None and runtime.slug == slug and runtime.nc is not None
