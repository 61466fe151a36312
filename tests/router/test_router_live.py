"""The router against the real stack: rules rows in PocketBase, telemetry through
JetStream, alerts on NATS; webhooks go to a respx mock (outbound HTTP only)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import respx

from rule_router.app import Router
from tests.live import ROLLOUT_WAIT, account_ready, connect, eventually, new_tenant, uid

OVERVIEW_RULE = """# PocketBase rule
- match: "cpu_percent > 90"
  action:
    - publish: "alerts.high-cpu"
    - webhook: "https://alerts.example.com/cpu"
"""


class Harness:
    def __init__(self, router, hooks, tenant, svc):
        self.router, self.hooks, self.tenant, self.svc = router, hooks, tenant, svc


async def _svc(admin, tenant, name="cairn-bridge"):
    return await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{tenant["id"]}" && name = "{name}" && jwt != ""'), 10)


def _mock_http() -> tuple[httpx.AsyncClient, respx.MockRouter]:
    hooks = respx.MockRouter(assert_all_called=False)
    hooks.post("https://alerts.example.com/cpu").respond(200)
    hooks.post("https://alerts.example.com/broken").respond(500)
    return httpx.AsyncClient(transport=httpx.MockTransport(hooks.handler)), hooks


@pytest.fixture(scope="module")
async def harness(bridge, router_identity, admin, pb_env, nats_env):
    tenant = await account_ready(admin, await new_tenant(admin))
    await _svc(admin, tenant, "cairn-router")
    http, hooks = _mock_http()
    router = Router(pb_env.url, nats_env.url, router_identity, http=http)
    await router.start()
    await eventually(lambda: _routing(router, tenant["id"]), 10, "router follows the tenant")
    await asyncio.wait_for(router.synced.wait(), ROLLOUT_WAIT)  # rows validated after it
    svc = await _svc(admin, tenant)
    nc = await connect(nats_env.url, svc["jwt"], svc["seed"], allow_reconnect=True)
    harness = Harness(router, hooks, tenant, nc)
    yield harness
    await nc.close()
    await harness.router.stop()  # a test may have replaced it (stop and restart)


async def _routing(router, tenant_id):
    return tenant_id in router.tenants


async def _rule(admin, tenant, yaml_text, enabled=True):
    return await admin.create("rules", {"tenant": tenant["id"], "name": uid("rule"),
                                        "enabled": enabled, "yaml": yaml_text})


async def _status(admin, row_id, status):
    row = await admin.get("rules", row_id)
    return row if row["status"] == status else None


async def _collect(nc, subject):
    got: list = []

    async def cb(msg):
        got.append(json.loads(msg.data) if msg.data.startswith(b"{") else msg.data)

    await nc.subscribe(subject, cb=cb)
    await nc.flush()
    await asyncio.sleep(0)
    await nc.flush()
    return got


async def _telemetry(nc, code, doc, kind="system"):
    await nc.jetstream().publish(f"agents.{code}.telemetry.{kind}", json.dumps(doc).encode())


async def test_overview_example_fires_only_on_high_cpu(harness, admin):
    row = await _rule(admin, harness.tenant, OVERVIEW_RULE)
    await eventually(lambda: _status(admin, row["id"], "valid"), 5)
    alerts = await _collect(harness.svc, "alerts.high-cpu")
    calls_before = harness.hooks.calls.call_count
    await _telemetry(harness.svc, "d1", {"cpu_percent": 85})
    await _telemetry(harness.svc, "d1", {"cpu_percent": 95, "source": "builtin"})
    await eventually(lambda: _count(alerts, 1), 5, "one alert")
    await asyncio.sleep(0.5)
    assert [a["cpu_percent"] for a in alerts] == [95]
    cpu_calls = [c for c in harness.hooks.calls if c.request.url.path == "/cpu"]
    assert harness.hooks.calls.call_count - calls_before == 1
    assert json.loads(cpu_calls[-1].request.content)["cpu_percent"] == 95
    await admin.update("rules", row["id"], {"enabled": False})


async def test_editing_a_row_changes_behaviour_and_bad_edits_keep_the_last_good(harness, admin):
    text = ('subject: "agents.*.heartbeat"\nmatch: "load > 5"\n'
            'actions:\n  - publish: "alerts.{@subject.1}.load"\n')
    row = await _rule(admin, harness.tenant, text)
    await eventually(lambda: _status(admin, row["id"], "valid"), 5)
    alerts = await _collect(harness.svc, "alerts.*.load")
    await harness.svc.publish("agents.web-1.heartbeat", b'{"load": 3}')
    await admin.update("rules", row["id"], {"yaml": text.replace("load > 5", "load > 2")})

    async def fires():
        await harness.svc.publish("agents.web-1.heartbeat", b'{"load": 3}')
        await asyncio.sleep(0.05)
        return bool(alerts)

    await eventually(fires, 5, "the edited rule fires")
    broken = text.replace('match: "load > 5"', 'match: "load >> 5"')
    await admin.update("rules", row["id"], {"yaml": broken})
    bad = await eventually(lambda: _status(admin, row["id"], "invalid"), 5)
    assert bad["error"].startswith("line 2:") and "last valid version stays active" in bad["error"]
    count = len(alerts)
    await harness.svc.publish("agents.web-2.heartbeat", b'{"load": 3}')
    await eventually(lambda: _count(alerts, count + 1), 5, "the last good version still runs")
    assert alerts[-1]["load"] == 3
    await admin.update("rules", row["id"], {"enabled": False})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("match: 'x > 1'\nactions:\n  - publsh: alerts.x\n", "line 3:"),
        ("match: 'x > 1'\nactions:\n  - publish: [oops\n", "invalid YAML"),
        ("match: 'x >'\nactions:\n  - publish: alerts.x\n", "line 1:"),
    ],
)
async def test_invalid_rules_report_the_line(harness, admin, text, expected):
    row = await _rule(admin, harness.tenant, text)
    bad = await eventually(lambda: _status(admin, row["id"], "invalid"), 5)
    assert expected in bad["error"]


async def test_failing_webhook_goes_to_deadletter_and_message_is_acked(harness, admin):
    text = ('subject: "agents.*.telemetry.service"\n'
            'actions:\n  - webhook: "https://alerts.example.com/broken"\n'
            '    retries: 2\n    backoff: 0.01\n')
    row = await _rule(admin, harness.tenant, text)
    await eventually(lambda: _status(admin, row["id"], "valid"), 5)
    dead = await _collect(harness.svc, "alerts.deadletter")
    await _telemetry(harness.svc, "d9", {"services": []}, kind="service")
    await eventually(lambda: _count(dead, 1), 10, "a dead letter")
    assert dead[0]["attempts"] == 2 and dead[0]["status"] == 500
    assert dead[0]["original"] == {"services": []}
    await admin.update("rules", row["id"], {"enabled": False})


async def test_tenants_never_see_each_others_messages(harness, admin, nats_env):
    other = await account_ready(admin, await new_tenant(admin))
    await eventually(lambda: _routing(harness.router, other["id"]), 10)
    row = await _rule(admin, other, 'subject: "agents.*.telemetry.system"\n'
                                     'actions:\n  - publish: "alerts.seen"\n')
    await eventually(lambda: _status(admin, row["id"], "valid"), 5)
    svc_b = await _svc(admin, other)
    nc_b = await connect(nats_env.url, svc_b["jwt"], svc_b["seed"])
    try:
        seen_b = await _collect(nc_b, "alerts.seen")
        seen_a = await _collect(harness.svc, "alerts.seen")
        await _telemetry(harness.svc, "d1", {"cpu_percent": 1})  # tenant A only
        await asyncio.sleep(1.0)
        assert seen_a == [] and seen_b == [], "tenant B's rule fired on tenant A's message"
        await _telemetry(nc_b, "d1", {"cpu_percent": 1})
        await eventually(lambda: _count(seen_b, 1), 5)
        assert seen_a == []
    finally:
        await nc_b.close()


async def test_stop_and_restart_mid_stream_processes_every_message(harness, admin, pb_env,
                                                                 nats_env, router_identity):
    text = ('subject: "agents.*.telemetry.inventory"\n'
            'actions:\n  - publish: "alerts.inv"\n    payload: \'{"n": {n}}\'\n')
    row = await _rule(admin, harness.tenant, text)
    await eventually(lambda: _status(admin, row["id"], "valid"), 5)
    got = await _collect(harness.svc, "alerts.inv")
    for n in range(50):
        await _telemetry(harness.svc, "d1", {"n": n}, kind="inventory")
    await harness.router.stop()  # a clean stop mid-stream (a SIGKILL: test_router_crash.py)
    for n in range(50, 100):
        await _telemetry(harness.svc, "d1", {"n": n}, kind="inventory")
    http, hooks = _mock_http()
    router = Router(pb_env.url, nats_env.url, router_identity, http=http)
    await router.start()
    harness.router, harness.hooks = router, hooks
    await eventually(lambda: _routing(router, harness.tenant["id"]), 30, "router restarted")

    async def complete():
        return {a["n"] for a in got} >= set(range(100))

    # a clean stop finishes the batch in hand; anything unacked would come back after the
    # consumer's ack wait (30 s)
    await eventually(complete, 90, "every message processed at least once")


async def _count(bucket, n):
    return len(bucket) >= n


async def test_a_regex_that_keeps_running_out_of_time_is_suspended_until_edited(harness, admin):
    slow = ('subject: "agents.*.telemetry.rx"\n'
            "match: \"host matches '^(a|aa)+$'\"\n"
            'actions:\n  - publish: "alerts.rx.slow"\n')
    row = await _rule(admin, harness.tenant, slow)
    fine = await _rule(admin, harness.tenant, 'subject: "agents.*.telemetry.rx"\n'
                                              'actions:\n  - publish: "alerts.rx.fine"\n')
    await eventually(lambda: _status(admin, row["id"], "valid"), 5)
    await eventually(lambda: _status(admin, fine["id"], "valid"), 5)
    slow_alerts = await _collect(harness.svc, "alerts.rx.slow")
    fine_alerts = await _collect(harness.svc, "alerts.rx.fine")
    for _ in range(4):  # each one costs the slow rule its 20 ms budget
        await _telemetry(harness.svc, "d1", {"host": "a" * 80 + "!"}, kind="rx")
    suspended = await eventually(lambda: _status(admin, row["id"], "invalid"), 5)
    assert "suspended after 3 messages" in suspended["error"]
    assert "took longer than 20 ms" in suspended["error"]
    await eventually(lambda: _count(fine_alerts, 4), 5, "the other rule saw every message")
    await _telemetry(harness.svc, "d1", {"host": "aaaa"}, kind="rx")
    await eventually(lambda: _count(fine_alerts, 5), 5)
    assert slow_alerts == []  # suspended: not evaluated even on harmless input
    # an edit loads it again
    await admin.update("rules", row["id"], {"yaml": slow.replace("(a|aa)+", "a+")})
    await eventually(lambda: _status(admin, row["id"], "valid"), 5)
    await _telemetry(harness.svc, "d1", {"host": "aaaa"}, kind="rx")
    await eventually(lambda: _count(slow_alerts, 1), 5, "the edited rule fires")
    for r in (row, fine):
        await admin.update("rules", r["id"], {"enabled": False})


async def test_router_carries_on_after_nats_restarts(harness, admin, nats_env):
    row = await _rule(admin, harness.tenant,
                      '- subject: "agents.*.telemetry.drill"\n'
                      '  actions:\n    - publish: "alerts.drill.js"\n'
                      '- subject: "agents.*.heartbeat"\n  match: "drill == true"\n'
                      '  actions:\n    - publish: "alerts.drill.core"\n')
    await eventually(lambda: _status(admin, row["id"], "valid"), 5)
    reconnects = harness.svc.stats["reconnects"]
    nats_env.restart()
    await eventually(lambda: _reconnected(harness.svc, reconnects), 15, "test client back")
    js_alerts = await _collect(harness.svc, "alerts.drill.js")
    core_alerts = await _collect(harness.svc, "alerts.drill.core")

    async def both_paths_fire() -> bool:
        # the router reconnects on its own schedule: keep sending until both paths answer
        await _telemetry(harness.svc, "d1", {"x": 1}, kind="drill")
        await harness.svc.publish("agents.d1.heartbeat", b'{"drill": true}')
        await asyncio.sleep(0.2)
        return bool(js_alerts) and bool(core_alerts)

    await eventually(both_paths_fire, 30, "telemetry and heartbeat rules fire again")
    await admin.update("rules", row["id"], {"enabled": False})


async def _reconnected(nc, reconnects_before):
    return nc.stats["reconnects"] > reconnects_before and nc.is_connected
