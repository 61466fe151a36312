"""SPEC §11 "Secrets", the router's part: a tenant admin's rule cannot read the router's
environment. `${NAME}` resolves only names in CAIRN_ROUTER_ENV_ALLOW; any other name makes
the row invalid with the same message whether or not it exists, and never its value. The
control rules in the same tenant, one using a listed name, fire."""

from __future__ import annotations

import json

import pytest

from cairn_common.pocketbase import PocketBase
from tests.factories import make_user_record
from tests.live import account_ready, connect, eventually, new_tenant, uid
from tests.router.harness import (
    at_least,
    collect,
    listening,
    row_with_status,
    service_creds,
    start_router,
)

pytestmark = pytest.mark.timeout(120)
SECRET = "hunter2-never-in-a-row"


@pytest.fixture(scope="module")
async def world(bridge, router_identity, admin, pb_admin, pb_env, nats_env):
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CAIRN_ADMIN_PASSWORD", SECRET)  # what a rule would like to read
        env.setenv("CAIRN_TEST_ALERT_TOKEN", "listed-token")
        env.setenv("CAIRN_ROUTER_ENV_ALLOW", "CAIRN_TEST_ALERT_TOKEN")
        tenant = await account_ready(admin, await new_tenant(admin))
        router = await start_router(pb_env, nats_env, admin, [tenant], router_identity)
        user, password = make_user_record(pb_admin, {tenant["id"]: "admin"})
        tenant_admin = PocketBase(pb_env.url)
        await tenant_admin.auth_with_password("users", user["email"], password)
        svc = await service_creds(admin, tenant)
        nc = await connect(nats_env.url, svc["jwt"], svc["seed"])
        yield tenant, tenant_admin, nc, router
        await nc.close()
        await tenant_admin.close()
        await router.stop()


def _rule(topic: str, payload: str) -> str:
    return (f"subject: alerts.{topic}.in\nactions:\n  - publish: alerts.{topic}.out\n"
            f"    payload: '{payload}'\n")


async def _create(pb: PocketBase, tenant: dict, text: str) -> dict:
    return await pb.create("rules", {"tenant": tenant["id"], "name": uid("rule"),
                                     "enabled": True, "yaml": text})


async def test_a_rule_reading_an_unlisted_variable_is_invalid_and_reveals_nothing(world, admin):
    tenant, tenant_admin, nc, router = world
    topic = uid("env")
    attack = await _create(tenant_admin, tenant, _rule(topic, '{"pw": "${CAIRN_ADMIN_PASSWORD}"}'))
    probe = await _create(tenant_admin, tenant, _rule(topic, '{"pw": "${CAIRN_NO_SUCH_VAR}"}'))
    listed = await _create(tenant_admin, tenant, _rule(topic, '{"t": "${CAIRN_TEST_ALERT_TOKEN}"}'))
    plain = await _create(tenant_admin, tenant, _rule(topic, '{"ok": true}'))
    bad = await row_with_status(admin, attack["id"], "invalid")
    assert bad["error"] == ("line 4: actions[0].payload: ${CAIRN_ADMIN_PASSWORD} is not "
                            "allowed: list it in CAIRN_ROUTER_ENV_ALLOW")
    other = await row_with_status(admin, probe["id"], "invalid")
    # existence is not revealed: a missing name gets exactly the same message
    assert other["error"] == bad["error"].replace("CAIRN_ADMIN_PASSWORD", "CAIRN_NO_SUCH_VAR")
    assert (await row_with_status(admin, listed["id"], "valid"))["error"] == ""
    await row_with_status(admin, plain["id"], "valid")
    out = await collect(nc, f"alerts.{topic}.out")
    await listening(router, tenant, f"alerts.{topic}.in")
    await nc.publish(f"alerts.{topic}.in", b"{}")
    await eventually(lambda: at_least(out, 2), 10, "both valid rules fire")
    bodies = sorted(msg.data for msg in out)
    assert bodies == [b'{"ok": true}', b'{"t": "listed-token"}']
    rows = [await tenant_admin.get("rules", r["id"]) for r in (attack, probe, listed, plain)]
    assert SECRET not in json.dumps(rows) and all(SECRET.encode() not in m.data for m in out)
