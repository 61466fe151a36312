"""A message too large to embed in its dead letter is not a poison message: the letter
carries a bounded excerpt of it (`original_truncated`, `original_size`), and a dead letter
refused for its size anyway is counted, logged and the message acked, never handed back
forever. Real PocketBase, NATS (max_payload and ALERTS' max_msg_size: 1 MiB) and router."""

from __future__ import annotations

import asyncio
import json

import nats.errors
import pytest
from nats.js.errors import APIError

from rule_router import acting, actions
from rule_router.acting import too_large
from rule_router.model import Firing, PublishOut, Rule
from tests.live import eventually, uid
from tests.router.harness import (
    add_rule,
    alerts_stream,
    routed_tenants,
    row_with_status,
    sample,
    stored_alerts,
    telemetry_consumer,
)

pytestmark = pytest.mark.timeout(120)
MIB = 1024 * 1024
BIG = MIB - 200  # fits TELEMETRY; its dead letter (JSON around it) would not fit 1 MiB


def _refused(kind: str, topic: str) -> str:
    """A rule whose publish the stream refuses: every message is dead-lettered."""
    return (f'subject: "agents.*.telemetry.{kind}"\n'
            f"actions:\n  - publish: alerts.{topic}\n    payload: '{{\"n\": 1}}'\n"
            "    headers: {Nats-Expected-Stream: ELSEWHERE}\n")


def _big() -> bytes:
    body = json.dumps({"blob": ""}).encode()
    return json.dumps({"blob": "x" * (BIG - len(body))}).encode()


async def _settled(nc) -> bool:
    """Acked: the ack floor reached what was delivered (a nak does not move it)."""
    info = await telemetry_consumer(nc)
    return (info.num_ack_pending == 0 and info.num_pending == 0
            and info.ack_floor.consumer_seq == info.delivered.consumer_seq)


async def _letters(nc, n: int) -> list:
    found = await stored_alerts(nc, "alerts.deadletter")
    return found if len(found) >= n else []


async def test_a_huge_message_is_dead_lettered_as_an_excerpt(
        bridge, router_identity, admin, pb_env, nats_env):
    async with routed_tenants(admin, pb_env, nats_env, router_identity) as (
            (tenant,), (nc,), _router):
        await alerts_stream(nc)
        kind, topic = uid("big"), uid("big")
        row = await add_rule(admin, tenant, _refused(kind, topic))
        await row_with_status(admin, row["id"], "valid")
        big = _big()
        assert len(big) == BIG
        await nc.jetstream().publish(f"agents.d1.telemetry.{kind}", big)
        (letter,) = await eventually(lambda: _letters(nc, 1), 15, "the dead letter stored")
        doc = json.loads(letter.data)
        assert doc["original_truncated"] is True and doc["original_size"] == BIG
        assert doc["original"] == big[:actions.ORIGINAL_MAX].decode()
        assert len(letter.data) < actions.ORIGINAL_MAX + 2048
        await eventually(lambda: _settled(nc), 10, "acked, not handed back")
        assert (await telemetry_consumer(nc)).num_redelivered == 0


async def test_a_dead_letter_refused_for_its_size_is_acked_not_retried(
        bridge, router_identity, admin, pb_env, nats_env, monkeypatch):
    monkeypatch.setattr(actions, "ORIGINAL_MAX", 4 * MIB)  # as before: no excerpt
    monkeypatch.setattr(acting, "RETRY_DELAY", 0.2)  # a hand-back would show at once
    async with routed_tenants(admin, pb_env, nats_env, router_identity) as (
            (tenant,), (nc,), _router):
        await alerts_stream(nc)
        kind, topic = uid("huge"), uid("huge")
        row = await add_rule(admin, tenant, _refused(kind, topic))
        await row_with_status(admin, row["id"], "valid")
        before = sample(acting.DEADLETTERS_TOO_LARGE)
        await nc.jetstream().publish(f"agents.d1.telemetry.{kind}", _big())
        await eventually(lambda: _settled(nc), 15, "acked, not handed back")
        await asyncio.sleep(0.5)
        assert await _settled(nc)
        assert sample(acting.DEADLETTERS_TOO_LARGE) == before + 1
        assert (await telemetry_consumer(nc)).num_redelivered == 0
        assert await stored_alerts(nc, "alerts.deadletter") == []


def test_small_originals_are_embedded_whole():
    rule = Rule(id="r1", name="r", subject="s.>", condition=None, actions=())
    firing = Firing(rule=rule, subject="s.x", payload=b'{"a": 1}', actions=())
    out = PublishOut(index=0, subject="alerts.x", payload=b"{}")
    doc = json.loads(actions.deadletter_payload(firing, out, "failed"))
    assert doc["original"] == {"a": 1} and "original_truncated" not in doc
    long = b"\xff" + b"y" * actions.ORIGINAL_MAX
    doc = json.loads(actions.deadletter_payload(firing, out, "failed", long))
    assert doc["original_truncated"] is True and doc["original_size"] == len(long)
    assert doc["original"].startswith("\ufffdy") and len(doc["original"]) == actions.ORIGINAL_MAX


def test_size_refusals_are_recognised():
    assert too_large(nats.errors.MaxPayloadError())
    assert too_large(APIError(code=400, err_code=10054,
                              description="message size exceeds maximum allowed"))
    assert not too_large(APIError(code=400, err_code=10060,
                                  description="expected stream does not match"))
    assert not too_large(nats.errors.TimeoutError())
