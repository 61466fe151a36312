"""Heartbeat and telemetry publishing, with a small bounded buffer for unacknowledged
JetStream messages (oldest dropped first, counted), sent again after reconnect."""

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

from agent.context import VERSION, Context, Stats
from agent.dispatcher import now_rfc3339
from agent.link import Link

log = logging.getLogger(__name__)

BUFFER = 500


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
                await nc.jetstream(timeout=5).publish(
                    item.subject, item.payload, headers={"Nats-Msg-Id": item.msg_id})
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                log.warning("telemetry not acknowledged; kept for later",
                            extra={"subject": item.subject, "error": str(exc) or
                                   exc.__class__.__name__, "buffered": len(self.buffer)})
                break
            self.buffer.popleft()
        self.ctx.stats.telemetry_buffered = len(self.buffer)
        return not self.buffer


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
