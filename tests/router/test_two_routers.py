"""Two routers at once with one identity (SPEC §12): they share each tenant's durable
consumer, so every telemetry message is handled by one of them; one is killed -9
mid-stream; the ALERTS stream ends with every alert exactly once (the survivor handles
what the dead one had fetched, and `Nats-Msg-Id` drops what both published)."""

from __future__ import annotations

import asyncio
import json

import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from tests.live import account_ready, connect, eventually, new_tenant, uid
from tests.router.test_router_crash import _router

RULE = ('subject: "agents.*.telemetry.ha"\n'
        'actions:\n  - publish: "alerts.ha"\n    payload: \'{"n": {n}}\'\n')
MESSAGES = 300


@pytest.mark.timeout(180)
async def test_two_routers_one_killed_every_alert_once(bridge, router_identity, admin, pb_env,
                                                      nats_env, tmp_path):
    tenant = await account_ready(admin, await new_tenant(admin))
    svc = await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{tenant["id"]}" && name = "cairn-bridge" && jwt != ""'), 10)
    row = await admin.create("rules", {"tenant": tenant["id"], "name": uid("ha"),
                                       "enabled": True, "yaml": RULE})
    nc = await connect(nats_env.url, svc["jwt"], svc["seed"], allow_reconnect=True)
    seen: set[int] = set()

    async def on_alert(msg) -> None:
        seen.add(json.loads(msg.data)["n"])

    await nc.subscribe("alerts.ha", cb=on_alert)
    js = nc.jetstream()
    routers = [_router(pb_env, nats_env, tmp_path, f"router-{i}", router_identity)
               for i in (1, 2)]
    try:
        async def routing() -> bool:  # probes until the routers fire the rule
            await js.publish("agents.probe.telemetry.ha", b'{"n": -1}')
            await asyncio.sleep(0.2)
            return -1 in seen

        await eventually(routing, 30, "the routers fire the rule")
        for n in range(MESSAGES):
            await js.publish("agents.d1.telemetry.ha", json.dumps({"n": n}).encode())
            if n == MESSAGES // 3:
                await eventually(lambda: _at_least(seen, 20), 10, "some alerts")
                routers[0].kill()  # SIGKILL mid-stream: nothing acked, drained or flushed
        assert routers[1].running

        async def complete() -> bool:
            return set(range(MESSAGES)) <= seen

        # what router-1 had fetched but not acked returns to router-2 after the ack wait
        await eventually(complete, 90, "every message handled")
        stored = await _stored_alerts(js)
        counts = {n: stored.count(n) for n in range(MESSAGES)}
        assert [n for n, c in counts.items() if c != 1] == [], "an alert stored twice or never"
    finally:
        for proc in routers:
            proc.stop()
        await admin.update("rules", row["id"], {"enabled": False})
        await nc.close()


async def _stored_alerts(js) -> list[int]:
    """Every `alerts.ha` message the tenant's ALERTS stream holds (probes left out)."""
    sub = await js.pull_subscribe("alerts.ha", stream="ALERTS", config=ConsumerConfig(
        deliver_policy=DeliverPolicy.ALL, ack_policy="none"))
    found: list[int] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(200, timeout=1)
            except TimeoutError:
                break
            found += [n for m in msgs if (n := json.loads(m.data)["n"]) >= 0]
    finally:
        await sub.unsubscribe()
    return found


async def _at_least(seen: set[int], count: int) -> bool:
    return len(seen) >= count
