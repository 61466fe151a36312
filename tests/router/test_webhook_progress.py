"""A webhook keeps its message alive: `progress` before every attempt, at every backoff and
on a ticker while one slow attempt or a long wait is outstanding — against a real HTTP
server on 127.0.0.1 (no JetStream needed: `progress` is a plain callback here)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from rule_router.actions import webhook
from rule_router.model import WebhookOut
from tests.router.harness import HttpSink, Request, respond


def _out(url: str, **kw) -> WebhookOut:
    return WebhookOut(url=url, method="POST", headers={}, body=b"{}", **kw)


def _slow(seconds: float, status: int = 200):
    async def reply(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(seconds)
        await respond(status)(request, writer)
    return reply


@pytest.fixture
async def sink():
    server = await HttpSink().start()
    yield server
    await server.stop()


class Beats:
    """Records when `progress` was called (seconds since the start)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.at: list[float] = []

    async def __call__(self) -> None:
        self.at.append(time.monotonic() - self.started)


async def test_progress_before_each_attempt_and_at_each_backoff(sink):
    sink.reply = respond(503)
    beats = Beats()
    async with httpx.AsyncClient() as client:
        result = await webhook.run(_out(sink.url(), attempts=3, backoff=0.05), client,
                                   progress=beats, every=10)
    assert not result.ok and result.attempts == 3 and len(sink.requests) == 3
    # 3 attempts + 2 backoff waits, nothing from the ticker (every=10 s)
    assert len(beats.at) == 5


async def test_a_single_slow_attempt_is_kept_alive_by_the_ticker(sink):
    sink.reply = _slow(1.0)
    beats = Beats()
    async with httpx.AsyncClient() as client:
        result = await webhook.run(_out(sink.url(), attempts=1), client,
                                   progress=beats, every=0.2)
    assert result.ok and len(sink.requests) == 1
    assert len(beats.at) >= 5  # once before, then about every 0.2 s of the 1 s attempt
    gaps = [b - a for a, b in zip(beats.at, beats.at[1:], strict=False)]
    assert max(gaps) < 0.5


async def test_a_long_backoff_is_kept_alive_too():
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # the wait itself, made slow on purpose
        waits.append(seconds)
        await asyncio.sleep(0.6)

    beats = Beats()
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(500 if calls == 1 else 200)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        result = await webhook.run(_out("https://hooks.example.com/x", attempts=2,
                                        backoff=0.5), client, sleep=sleep,
                                   progress=beats, every=0.15)
    assert result.ok and result.attempts == 2 and waits == [0.5]
    during_wait = [t for t in beats.at if 0.05 < t < 0.6]
    assert len(during_wait) >= 3  # the ticker ran during the 0.6 s wait


async def test_a_failing_progress_never_fails_the_call(sink):
    async def broken() -> None:
        raise ConnectionError("the NATS link is gone")

    sink.reply = _slow(0.3)
    async with httpx.AsyncClient() as client:
        result = await webhook.run(_out(sink.url(), attempts=1), client, progress=broken,
                                   every=0.05)
    assert result.ok and result.status == 200


async def test_without_progress_nothing_changes(sink):
    async with httpx.AsyncClient() as client:
        result = await webhook.run(_out(sink.url()), client)
    assert result.ok and result.attempts == 1
