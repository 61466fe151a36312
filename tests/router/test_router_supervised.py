"""The telemetry consumer survives what used to end it: an exception in a batch or in one
message is logged, counted (`cairn_router_consumer_errors_total{stage}`) and retried;
the messages involved are handed back and still fire. Real PocketBase, NATS and router."""

from __future__ import annotations

import json
import time

import pytest

from rule_router import acting, consumer, metrics
from tests.live import eventually, uid
from tests.router.harness import (
    add_rule,
    at_least,
    collect,
    routed_tenants,
    row_with_status,
    sample,
)

pytestmark = pytest.mark.timeout(120)


def _rule(kind: str, topic: str) -> str:
    return (f'subject: "agents.*.telemetry.{kind}"\n'
            f'actions:\n  - publish: "alerts.{topic}"\n    payload: \'{{"n": {{n}}}}\'\n')


async def _send(nc, kind: str, n: int) -> None:
    await nc.jetstream().publish(f"agents.d1.telemetry.{kind}", json.dumps({"n": n}).encode())


async def _firing(nc, kind: str, alerts: list) -> None:
    """Return once the rule is loaded and the consumer pulling (a probe fired)."""
    async def probe() -> bool:
        await _send(nc, kind, -1)
        try:
            return await eventually(lambda: at_least(alerts, 1), 2, "probe") is not None
        except AssertionError:  # not yet: the outer wait sends another probe
            return False

    await eventually(probe, 20, "the rule fires")


async def test_a_batch_that_raises_does_not_end_the_consumer(
        bridge, router_identity, admin, pb_env, nats_env, monkeypatch):
    monkeypatch.setattr(consumer, "BACKOFF_FIRST", 0.2)
    async with routed_tenants(admin, pb_env, nats_env, router_identity) as (
            (tenant,), (nc,), router):
        kind, topic = uid("sv"), uid("sv")
        row = await add_rule(admin, tenant, _rule(kind, topic))
        await row_with_status(admin, row["id"], "valid")
        alerts = await collect(nc, f"alerts.{topic}")
        runtime = router.tenants[tenant["id"]]

        await _firing(nc, kind, alerts)
        real = runtime._handle_batch
        failures = 0

        async def flaky(msgs):
            nonlocal failures
            if failures == 0:
                failures += 1
                raise RuntimeError("injected: a bug in batch handling")
            await real(msgs)

        monkeypatch.setattr(runtime, "_handle_batch", flaky)
        before = sample(metrics.CONSUMER_ERRORS, "batch")
        await _send(nc, kind, 1)  # lands in the batch that raises
        await eventually(lambda: _equals(lambda: failures, 1), 10, "the injected failure")
        for n in (2, 3):
            await _send(nc, kind, n)
        await eventually(lambda: _has(alerts, {1, 2, 3}), 15,
                         "the failed batch's message and the next ones fire")
        assert sample(metrics.CONSUMER_ERRORS, "batch") == before + 1
        (task,) = runtime.tasks
        assert not task.done()  # the consume loop is still running


async def test_a_message_that_raises_is_handed_back_and_the_rest_go_on(
        bridge, router_identity, admin, pb_env, nats_env, monkeypatch):
    monkeypatch.setattr(acting, "RETRY_DELAY", 0.3)
    async with routed_tenants(admin, pb_env, nats_env, router_identity) as (
            (tenant,), (nc,), router):
        kind, topic = uid("sv"), uid("sv")
        row = await add_rule(admin, tenant, _rule(kind, topic))
        await row_with_status(admin, row["id"], "valid")
        alerts = await collect(nc, f"alerts.{topic}")
        runtime = router.tenants[tenant["id"]]

        await _firing(nc, kind, alerts)
        real = runtime.evaluate
        poisoned: list[bytes] = []

        def flaky(msg, redo=None):
            if b'"n": 10' in msg.data and not poisoned:
                poisoned.append(msg.data)
                raise ValueError("injected: evaluation blew up on this one")
            return real(msg, redo)

        monkeypatch.setattr(runtime, "evaluate", flaky)
        before = sample(metrics.CONSUMER_ERRORS, "message")
        for n in (10, 11, 12):
            await _send(nc, kind, n)
        await eventually(lambda: _has(alerts, {10, 11, 12}), 15,
                         "the failed message comes back and fires; the others were not held")
        assert poisoned and sample(metrics.CONSUMER_ERRORS, "message") == before + 1
        assert [a for a in _ns(alerts) if a >= 10].count(10) == 1
        assert not runtime.tasks[0].done()


async def test_a_consumer_backing_off_still_stops_at_once(
        bridge, router_identity, admin, pb_env, nats_env, monkeypatch):
    monkeypatch.setattr(consumer, "BACKOFF_FIRST", 30.0)
    async with routed_tenants(admin, pb_env, nats_env, router_identity) as (
            (tenant,), (nc,), router):
        kind, topic = uid("sv"), uid("sv")
        row = await add_rule(admin, tenant, _rule(kind, topic))
        await row_with_status(admin, row["id"], "valid")
        runtime = router.tenants[tenant["id"]]
        before = sample(metrics.CONSUMER_ERRORS, "batch")

        async def broken(msgs):
            raise RuntimeError("injected: every batch fails")

        monkeypatch.setattr(runtime, "_handle_batch", broken)
        await _send(nc, kind, 1)
        await eventually(lambda: _equals(lambda: sample(metrics.CONSUMER_ERRORS, "batch"),
                                         before + 1), 10, "the failure")
        started = time.monotonic()
        await runtime.stop(grace=5)  # in a 30 s backoff: cut short, not cancelled at grace
        assert time.monotonic() - started < 1.5
        assert runtime.tasks[0].done() and not runtime.tasks[0].cancelled()


def _ns(alerts) -> list[int]:
    return [json.loads(m.data)["n"] for m in alerts]


async def _has(alerts, wanted: set[int]) -> bool:
    return wanted <= set(_ns(alerts))


async def _equals(get, value) -> bool:
    return get() == value
