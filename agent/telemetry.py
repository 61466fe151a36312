"""Heartbeat and telemetry publishing, with a small bounded buffer for unacknowledged
JetStream messages (oldest dropped first, counted), sent again after reconnect.

Every telemetry message gets its `Nats-Msg-Id` once, when it is made, and keeps it in the
buffer: a resend after a lost ack is dropped by the stream's duplicate window instead of
stored twice. While a replicated stream elects a new leader (4-6 s after its node died)
publishes fail fast with "no stream response": those are retried with backoff (about 8 s
in all) before the message waits for the next flush."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js.errors import NoStreamResponseError

from agent.context import VERSION, Context, Stats
from agent.dispatcher import now_rfc3339
from agent.link import Link

log = logging.getLogger(__name__)

BUFFER = 500
# seconds between tries while the stream has no leader (NoStreamResponseError)
LEADERLESS_BACKOFF = (0.25, 0.5, 1.0, 2.0, 4.0)


@dataclass
class Pending:
    subject: str
    payload: bytes
    msg_id: str


class Telemetry:
    def __init__(self, ctx: Context, link: Link) -> None:
        self.ctx = ctx
        self.link = link
        self.code = ctx.config.device.code
        self.buffer: deque[Pending] = deque()
        self._lock = asyncio.Lock()

    def subject(self, kind: str) -> str:
        return f"agents.{self.code}.telemetry.{kind}"

    async def heartbeat(self) -> None:
        """Core publish (not stored): liveness for presence tracking."""
        stats = self.ctx.stats
        doc = heartbeat_doc(self.code, stats)
        nc = self.link.nc
        if nc is None or not nc.is_connected:
            return
        await nc.publish(f"agents.{self.code}.heartbeat", json.dumps(doc).encode())
        stats.heartbeat_count += 1
        stats.last_heartbeat = doc["timestamp"]

    async def publish(self, kind: str, doc: dict[str, Any]) -> bool:
        """JetStream publish with ack; on failure the message waits in the buffer."""
        doc = {**doc, "timestamp": now_rfc3339()}
        item = Pending(self.subject(kind), json.dumps(doc, default=str).encode(),
                       uuid.uuid4().hex)
        async with self._lock:
            self.buffer.append(item)
            if len(self.buffer) > BUFFER:
                self.buffer.popleft()
                self.ctx.stats.telemetry_dropped += 1
            return await self._flush_locked()

    async def flush(self) -> bool:
        async with self._lock:
            return await self._flush_locked()

    async def _flush_locked(self) -> bool:
        nc = self.link.nc
        while self.buffer:
            if nc is None or not nc.is_connected:
                break
            item = self.buffer[0]
            try:
                await publish_acked(nc, item)
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                log.warning("telemetry not acknowledged; kept for later",
                            extra={"subject": item.subject, "error": str(exc) or
                                   exc.__class__.__name__, "buffered": len(self.buffer)})
                break
            self.buffer.popleft()
        self.ctx.stats.telemetry_buffered = len(self.buffer)
        return not self.buffer


async def publish_acked(nc: NATS, item: Pending,
                        backoff: tuple[float, ...] = LEADERLESS_BACKOFF) -> None:
    """One JetStream publish, tried again (same Nats-Msg-Id) while the stream is between
    leaders; other errors, and the last "no stream response", are raised."""
    js = nc.jetstream(timeout=5)
    for pause in (*backoff, None):
        try:
            await js.publish(item.subject, item.payload, headers={"Nats-Msg-Id": item.msg_id})
            return
        except NoStreamResponseError:
            if pause is None or not nc.is_connected:
                raise
            log.info("telemetry stream has no leader right now; retrying",
                     extra={"subject": item.subject, "retry_in": pause})
            await asyncio.sleep(pause)


def heartbeat_doc(code: str, stats: Stats) -> dict[str, Any]:
    """The heartbeat body. The bridge counts only this shape as a heartbeat
    (pb_hooks_bridge/presence.py `not_a_heartbeat`, tested against this function)."""
    return {"status": "alive", "device": code, "version": VERSION,
            "uptime_seconds": int(time.monotonic() - stats.started_monotonic),
            "timestamp": now_rfc3339()}


async def every(interval: float, first_delay: float, work: Callable[[], Awaitable[Any]],
                name: str) -> None:
    """Run `work` now-ish and then every `interval` seconds; one failure never stops it."""
    await asyncio.sleep(first_delay)
    while True:
        started = time.monotonic()
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("periodic task failed", extra={"task": name})
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
