"""SPEC §11 "Replies and subjects", the router's part: a rule listens only within agents.>
and alerts.> and publishes only under alerts. (a rule on `>`, `_INBOX.>` or `$JS.API.>`
would read other identities' replies; one publishing to `agents.{code}.cmd.exec` would
command a device). The router's own connection uses its own inbox prefix and subscribes
to nothing outside those namespaces. A control rule in the same tenant fires."""

from __future__ import annotations

import httpx
import pytest

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
INBOX = "_INBOX_svc_cairn-router"


@pytest.fixture(scope="module")
async def world(bridge, router_identity, admin, pb_env, nats_env):
    async with routed_tenants(admin, pb_env, nats_env, router_identity) as (
            tenants, links, router):
        yield tenants[0], router, links[0]


@pytest.mark.parametrize("filter_", [">", "_INBOX.>", "$JS.API.>", "_INBOX_svc_cairn-bridge.>"])
async def test_a_rule_listening_outside_the_namespaces_is_invalid(world, admin, filter_):
    tenant, router, nc = world
    topic = uid("ns")
    wide = await add_rule(admin, tenant, f"name: wide\nsubject: '{filter_}'\n"
                                         f"actions: [{{publish: alerts.{topic}.stolen}}]\n")
    control = await add_rule(admin, tenant, f"subject: alerts.{topic}.in\n"
                                            f"actions: [{{publish: alerts.{topic}.out}}]\n")
    bad = await row_with_status(admin, wide["id"], "invalid")
    assert bad["error"] == (f"line 2: subject {filter_!r} is outside what rules may listen on "
                            "(agents.> or alerts.>)")
    await row_with_status(admin, control["id"], "valid")
    out = await collect(nc, f"alerts.{topic}.out")
    await listening(router, tenant, f"alerts.{topic}.in")
    await nc.publish(f"alerts.{topic}.in", b"{}")
    await eventually(lambda: at_least(out, 1), 10, "the control rule fires")
    await admin.update("rules", control["id"], {"enabled": False})


async def test_a_rule_publishing_outside_alerts_is_invalid(world, admin):
    tenant, router, nc = world
    topic = uid("pub")
    command = await add_rule(admin, tenant, "subject: agents.*.heartbeat\nactions:\n"
                                            "  - publish: 'agents.{@subject.1}.cmd.exec'\n"
                                            "    payload: '{\"command\": \"rm -rf /\"}'\n")
    anywhere = await add_rule(admin, tenant, "subject: agents.*.heartbeat\nactions:\n"
                                             "  - publish: '{target}'\n")
    control = await add_rule(admin, tenant, f"subject: agents.*.{topic}\nactions:\n"
                                            f"  - publish: 'alerts.{{@subject.1}}.{topic}'\n")
    for row in (command, anywhere):
        bad = await row_with_status(admin, row["id"], "invalid")
        assert bad["error"] == ("line 3: actions[0].publish must start with 'alerts.': rules "
                                "publish only under alerts.>")
    await row_with_status(admin, control["id"], "valid")
    out = await collect(nc, f"alerts.d1.{topic}")
    await listening(router, tenant, f"agents.*.{topic}")
    await nc.publish(f"agents.d1.{topic}", b"{}")
    await eventually(lambda: at_least(out, 1), 10, "the control rule fires")
    await admin.update("rules", control["id"], {"enabled": False})


async def test_the_router_uses_its_own_inbox_and_subscribes_within_its_namespaces(
        world, admin, nats_env):
    tenant, router, nc = world
    runtime = router.tenants[tenant["id"]]
    assert runtime.nc._inbox_prefix == INBOX.encode()
    assert runtime.nc.new_inbox().startswith(INBOX + ".")
    topic = uid("sub")
    row = await add_rule(admin, tenant, f"subject: alerts.{topic}.>\n"
                                        f"actions: [{{publish: alerts.{topic}-out}}]\n")
    await row_with_status(admin, row["id"], "valid")
    out = await collect(nc, f"alerts.{topic}-out")
    await listening(router, tenant, f"alerts.{topic}.>")
    await nc.publish(f"alerts.{topic}.x", b"{}")
    await eventually(lambda: at_least(out, 1), 10, "the rule fires")
    subjects = await _subscriptions(nats_env, f"cairn-router/{tenant['slug']}")
    assert f"alerts.{topic}.>" in subjects
    outside = [s for s in subjects if not s.startswith(("agents.", "alerts.", INBOX + "."))]
    assert outside == []
    await admin.update("rules", row["id"], {"enabled": False})


async def _subscriptions(nats_env, name: str) -> list[str]:
    async with httpx.AsyncClient() as client:
        resp = await client.get(f"{nats_env.monitor_url}/connz",
                                params={"subs": "1", "limit": "10000"})
    resp.raise_for_status()
    conns = [c for c in resp.json()["connections"] if c.get("name") == name]
    assert len(conns) == 1, [c.get("name") for c in resp.json()["connections"]]
    return conns[0].get("subscriptions_list", [])
