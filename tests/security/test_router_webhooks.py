"""SPEC §11 "Outbound": a tenant admin's webhook cannot reach the router's own network.
A literal non-public address is invalid at validation; a host only known at render time
(from a message field, or a name resolving to loopback) is refused on the resolved address
at connect time, not retried, and dead-lettered naming the setting (and the class of an
address, never of a name).
The real server on 127.0.0.1 gets nothing — until CAIRN_ROUTER_WEBHOOK_ALLOW lists it. A
name's refusal never says where (or whether) it resolves; a rule cannot set `Host` or the
headers that frame a request."""

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
SETTING = "CAIRN_ROUTER_WEBHOOK_ALLOW"


@pytest.fixture
async def sink():
    server = await HttpSink().start()
    yield server
    await server.stop()


async def test_webhooks_to_loopback_are_refused_until_the_operator_allows_them(
        bridge, router_identity, admin, pb_env, nats_env, sink, monkeypatch):
    tenant = await account_ready(admin, await new_tenant(admin))
    svc = await service_creds(admin, tenant)
    nc = await connect(nats_env.url, svc["jwt"], svc["seed"])
    topic = uid("hook")
    trigger = f"subject: alerts.{topic}.hook\nactions:\n  - webhook: '{{url}}'\n" \
              "    retries: 5\n    backoff: 0.01\n"
    monkeypatch.delenv(SETTING, raising=False)
    router = await start_router(pb_env, nats_env, admin, [tenant], router_identity)
    try:
        literal = await add_rule(admin, tenant, trigger.format(url=sink.url("/literal")))
        metadata = await add_rule(admin, tenant, trigger.format(
            url="http://169.254.169.254/latest/meta-data/"))
        templated = await add_rule(admin, tenant, trigger.format(
            url="http://{host}:{port}/templated"))
        bad = await row_with_status(admin, literal["id"], "invalid")
        assert bad["error"] == (
            "line 3: actions[0].webhook: refused: 127.0.0.1 is not a public address "
            f"(loopback); webhooks may reach it only if {SETTING} lists it")
        meta = await row_with_status(admin, metadata["id"], "invalid")
        assert "(link-local: cloud metadata)" in meta["error"]
        await row_with_status(admin, templated["id"], "valid")  # the host is not known yet
        dead = await collect(nc, "alerts.deadletter")
        await listening(router, tenant, f"alerts.{topic}.hook")
        # an internal name and one that does not exist must read the same (no DNS map)
        for host in ("127.0.0.1", "localhost", "no-such-host.invalid"):
            await nc.publish(f"alerts.{topic}.hook",
                             json.dumps({"host": host, "port": sink.port}).encode())
        await eventually(lambda: at_least(dead, 3), 10, "three dead letters")
        letters = sorted((json.loads(m.data) for m in dead), key=lambda d: d["error"])
        assert [d["attempts"] for d in letters] == [1, 1, 1]  # refused: never retried
        assert [d["error"] for d in letters] == [
            f"refused: 127.0.0.1 is not a public address (loopback); webhooks may reach it "
            f"only if {SETTING} lists it",
            f"refused: localhost does not resolve to a public address; webhooks may reach "
            f"it only if {SETTING} lists it",
            f"refused: no-such-host.invalid does not resolve to a public address; webhooks "
            f"may reach it only if {SETTING} lists it"]
        assert [m.headers.get("Cairn-Hops") for m in dead] == ["1", "1", "1"]
        assert sink.connections == 0 and sink.requests == []
    finally:
        await router.stop()

    # positive control: the operator lists the address; the same rows, the same server
    monkeypatch.setenv(SETTING, "127.0.0.1")
    router = await start_router(pb_env, nats_env, admin, [tenant], router_identity)
    try:
        assert (await row_with_status(admin, literal["id"], "valid"))["error"] == ""
        await row_with_status(admin, metadata["id"], "invalid")  # still not listed
        await listening(router, tenant, f"alerts.{topic}.hook")
        for host in ("127.0.0.1", "localhost"):
            await nc.publish(f"alerts.{topic}.hook",
                             json.dumps({"host": host, "port": sink.port}).encode())
        await eventually(lambda: at_least(sink.requests, 4), 10, "the server is reached")
        assert sorted(r.path for r in sink.requests) == ["/literal", "/literal",
                                                         "/templated", "/templated"]
        assert len(dead) == 3
    finally:
        await router.stop()
        await nc.close()


async def test_a_webhook_cannot_set_the_host_or_framing_headers(
        bridge, router_identity, admin, pb_env, nats_env, sink, monkeypatch):
    """`Host` would let a rule aimed at a public ingress address reach the internal virtual
    hosts behind it; framing headers could smuggle a request. Control: other headers go."""
    monkeypatch.setenv(SETTING, "127.0.0.1")
    tenant = await account_ready(admin, await new_tenant(admin))
    svc = await service_creds(admin, tenant)
    nc = await connect(nats_env.url, svc["jwt"], svc["seed"])
    topic = uid("hdr")
    rule = (f"subject: alerts.{topic}.in\nactions:\n  - webhook: '{sink.url()}'\n"
            "    headers: {{{name}: 'admin.internal'}}\n")
    router = await start_router(pb_env, nats_env, admin, [tenant], router_identity)
    try:
        for header in ("Host", "transfer-encoding", "Proxy-Authorization"):
            smuggle = await add_rule(admin, tenant, rule.format(name=header))
            bad = await row_with_status(admin, smuggle["id"], "invalid")
            assert bad["error"] == (f"line 4: actions[0].headers: {header} is set by the "
                                    "router's HTTP client, not by rules")
        control = await add_rule(admin, tenant, rule.format(name="X-Forwarded-Team"))
        await row_with_status(admin, control["id"], "valid")
        await listening(router, tenant, f"alerts.{topic}.in")
        await nc.publish(f"alerts.{topic}.in", b"{}")
        await eventually(lambda: at_least(sink.requests, 1), 10, "the control call")
        await nc.flush()
        (request,) = sink.requests
        assert request.headers["host"] == f"127.0.0.1:{sink.port}"
        assert request.headers["x-forwarded-team"] == "admin.internal"
    finally:
        await router.stop()
        await nc.close()
