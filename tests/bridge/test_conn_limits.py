"""A tenant at its NATS connection limit says so in `tenants.error`, and the message goes
once it is below the limit again (pb_hooks_bridge/conn_limits.py)."""

from __future__ import annotations

import nats
import pytest

from pb_hooks_bridge.conn_limits import PREFIX
from pb_hooks_bridge.limits import LIMIT_KEYS
from tests.live import account_ready, connect, enroll, eventually, new_device, new_tenant

LIMIT = 3


async def test_a_tenant_at_its_connection_limit_shows_it(bridge, admin, pb_env, nats_env):
    small = await account_ready(admin, await new_tenant(
        admin, limits={"max_connections": LIMIT}))
    roomy = await account_ready(admin, await new_tenant(admin))  # the control tenant
    checker = bridge.bridge.conn_limits
    agents = [await enroll(pb_env.url, admin, await new_device(admin, small))
              for _ in range(LIMIT + 1)]
    other = await enroll(pb_env.url, admin, await new_device(admin, roomy))
    conns = [await connect(nats_env.url, other.jwt, other.seed)]
    try:
        refused: list[Exception] = []
        for agent in agents:  # the bridge's own link counts too: the last ones are refused
            try:
                conns.append(await connect(nats_env.url, agent.jwt, agent.seed, refused))
            except (nats.errors.Error, OSError):
                pass
        assert any("maximum" in str(e).lower() for e in refused), refused

        async def shown() -> dict | None:
            await checker.check()
            row = await admin.get("tenants", small["id"])
            return row if row["error"].startswith(PREFIX) else None

        row = await eventually(shown, 15, "the limit shown on the tenant")
        assert f"of {LIMIT} connections" in row["error"] and "max_connections" in row["error"]
        assert (await admin.get("tenants", roomy["id"]))["error"] == ""
        # an unrelated update of the tenant (its sync clears other errors) keeps the message
        await admin.update("tenants", small["id"], {"name": "renamed"})
        await eventually(lambda: _named(admin, small["id"], "renamed"), 10)
        assert (await admin.get("tenants", small["id"]))["error"].startswith(PREFIX)

        for nc in conns[1:]:  # the small tenant's agents leave
            await nc.close()

        async def cleared() -> bool:
            await checker.check()
            return (await admin.get("tenants", small["id"]))["error"] == ""

        await eventually(cleared, 15, "the message cleared below the limit")
    finally:
        for nc in conns:
            if not nc.is_closed:
                await nc.close()


async def _named(admin, tenant_id: str, name: str) -> bool:
    return (await admin.get("tenants", tenant_id))["name"] == name


@pytest.mark.parametrize("key", ["max_connections"])
def test_default_connection_limit_fits_a_large_fleet(key):
    assert LIMIT_KEYS[key][1] >= 20_000
