"""Presence: `devices.online` / `last_seen` from heartbeats, and the trigger that drains a
device's queued commands when it shows up.

Built for 20,000 agents beating every 60 s (SPEC §12). A heartbeat costs one dict write in
the subscription callback: beats are folded per device in `pending` and a supervised loop
(`run`) handles them every `FLUSH_EVERY` seconds in one pass: unknown codes are looked up
many per query (device_ids.py), and writes go out through the batch writer with bounded
concurrency. `online` is written when it changes; `last_seen` at most every
`write_every()` seconds per device, a period that grows with the fleet so the writes stay
within `WRITE_BUDGET` rows/s: under load presence gets less fresh, and identity work
(revocations, enrollment) never waits behind it. The first `online` of many devices at
once is paced too: at most `ONLINE_BUDGET` x `FLUSH_EVERY` of them per pass (the rest
wait in `pending` for the next one). A pass waits for its writes, so when PocketBase is
slow the passes are too and the pace drops with it (20,000 agents: about 40 rows/s on 2
cores, docs/benchmarks.md): a fleet coming up shows online over a few minutes instead of
saturating PocketBase.
The bridge's own writes come back as
realtime events; the event router drops those that change nothing but presence fields
(events.py `PRESENCE_FIELDS`).

Only heartbeats count. NATS does not check a publisher's reply subject against its
permissions, and JetStream answers into it with the account's own client: a device's
telemetry publish or a service user's direct get with reply `agents.<other>.heartbeat`
makes the server publish a PubAck, a stored message or a `Status: 404` there, which would
mark an offline device online and drain its queued commands. So a message with JetStream's
headers, a server reply subject (a consumer delivery), or a body that is not the agent's
heartbeat document (agent/telemetry.py `heartbeat_doc`) is ignored and counted
(`cairn_bridge_heartbeats_ignored_total{reason}`), with a warning at most once a minute.

Subscriptions are in the queue group QUEUE: while a renewed tenant link overlaps the old
one (links.py), each heartbeat is still counted once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from nats.aio.msg import Msg

from cairn_common.pocketbase import PocketBase, PocketBaseError
from cairn_common.server_messages import server_header, server_reply
from pb_hooks_bridge import metrics
from pb_hooks_bridge.device_ids import DeviceIds
from pb_hooks_bridge.dispatch import CommandDispatcher, pb_now
from pb_hooks_bridge.writer import BatchWriter

log = logging.getLogger(__name__)

FLUSH_EVERY = 2.0  # seconds between passes over the folded heartbeats
WRITE_EVERY = 60.0  # shortest period between last_seen writes for one device
WRITE_BUDGET = 50.0  # last_seen rows written per second at most, on average
# first `online` writes per second at most: 20,000 agents coming up at once (a fresh fleet,
# a bridge restart) would otherwise keep PocketBase busy writing for minutes, and the
# realtime event of a disable would queue behind those writes (SPEC §12)
ONLINE_BUDGET = 100.0
OFFLINE_AFTER = 150.0  # no heartbeat for this long (2.5 x 60 s) -> offline
MAX_PENDING = 100_000  # folded heartbeats waiting for a pass (more are dropped, counted)
WRITERS = 32  # row writes in flight at once (the batch writer packs them)
DRAINS = 8  # queued-command drains started at once
MAX_HEARTBEAT_BYTES = 16 * 1024  # a real one is ~120 bytes
IGNORED_LOG_EVERY = 60.0  # seconds between warnings about ignored heartbeats
QUEUE = "cairn-bridge"  # the bridge's queue group in tenant accounts (links.py)


class Presence:
    def __init__(self, pb: PocketBase, dispatcher: CommandDispatcher,
                 ids: DeviceIds | None = None) -> None:
        self.pb = pb
        self.dispatcher = dispatcher
        self.ids = ids or DeviceIds(pb)
        self.writer = BatchWriter(pb)
        self.pending: dict[tuple[str, str], float] = {}  # (tenant, code) -> last beat
        self.seen: dict[str, float] = {}  # device id -> monotonic time of last heartbeat
        self.written: dict[str, float] = {}  # device id -> monotonic time of last write
        self.wake = asyncio.Event()
        self._ignored_logged = -math.inf  # monotonic time of the last "ignored" warning

    async def watch(self, tenant_id: str, nc: Any) -> None:
        """Subscribe to one tenant's heartbeats (called for each new tenant link)."""

        async def on_heartbeat(msg: Msg) -> None:
            reason = not_a_heartbeat(msg.subject, msg.reply, msg.headers, msg.data)
            if reason is not None:
                self._ignore(tenant_id, msg.subject, reason)
                return
            metrics.HEARTBEATS.inc()
            key = (tenant_id, msg.subject.split(".")[1])
            if key not in self.pending and len(self.pending) >= MAX_PENDING:
                metrics.HEARTBEATS_IGNORED.labels("overload").inc()
                return
            self.pending[key] = time.monotonic()

        await nc.subscribe("agents.*.heartbeat", queue=QUEUE, cb=on_heartbeat)

    def forget(self, tenant_id: str, code: str, device_id: str = "") -> None:
        """A device row was created or deleted: drop what was cached for its code (and, for
        a deleted row, everything about its id)."""
        self.ids.forget(tenant_id, code, device_id)
        if device_id:
            self.seen.pop(device_id, None)
            self.written.pop(device_id, None)
            self.dispatcher.offline.discard(device_id)

    def write_every(self) -> float:
        """Seconds between last_seen writes for one device: longer for bigger fleets."""
        return max(WRITE_EVERY, len(self.seen) / WRITE_BUDGET)

    async def run(self) -> None:
        """The presence loop: handle folded heartbeats every FLUSH_EVERY seconds."""
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            await self.flush()

    async def flush(self) -> int:
        """Handle the heartbeats folded since the last pass; returns the devices seen."""
        batch, self.pending = self.pending, {}
        by_tenant: dict[str, list[str]] = {}
        for tenant_id, code in batch:
            by_tenant.setdefault(tenant_id, []).append(code)
        writes: list[tuple[str, dict[str, Any], str, str]] = []
        drains: list[str] = []
        every = self.write_every()
        room = max(1, int(ONLINE_BUDGET * FLUSH_EVERY))  # first `online` writes this pass
        deferred = 0
        # small tenants first: the room for first `online` writes is not used up by the
        # one tenant whose thousands of agents all came up at once
        for tenant_id, codes in sorted(by_tenant.items(), key=lambda item: len(item[1])):
            found = await self.ids.resolve_many(tenant_id, codes)
            for code, device_id in found.items():
                beat = batch[(tenant_id, code)]
                last = self.seen.get(device_id)
                was_seen = last is not None and beat - last < OFFLINE_AFTER
                if device_id in self.dispatcher.offline:
                    drains.append(device_id)  # never deferred: its commands are waiting
                    self.dispatcher.offline.discard(device_id)
                if not was_seen and room <= 0:  # the next pass writes it
                    key = (tenant_id, code)
                    self.pending[key] = max(beat, self.pending.get(key, beat))
                    deferred += 1
                    continue
                self.seen[device_id] = max(beat, last or beat)
                if not was_seen:
                    room -= 1
                    writes.append((device_id, {"last_seen": pb_now(), "online": True},
                                   tenant_id, code))
                elif beat - self.written.get(device_id, -math.inf) >= every:
                    writes.append((device_id, {"last_seen": pb_now()}, tenant_id, code))
        if deferred:
            metrics.PRESENCE_DEFERRED.inc(deferred)
        await self._write_all(writes)
        await self._drain_all(drains)
        metrics.PRESENCE_PENDING.set(len(self.pending))
        return sum(len(c) for c in by_tenant.values())

    async def sweep(self) -> int:
        """Mark devices offline whose heartbeats stopped."""
        now = time.monotonic()
        gone = [d for d, t in self.seen.items() if now - t >= OFFLINE_AFTER]
        for device_id in gone:
            del self.seen[device_id]
            self.written.pop(device_id, None)
        await self._write_all([(d, {"online": False}, "", "") for d in gone])
        return len(gone)

    async def _write_all(self, writes: list[tuple[str, dict[str, Any], str, str]]) -> None:
        limit = asyncio.Semaphore(WRITERS)
        now = time.monotonic()

        async def one(device_id: str, patch: dict[str, Any], tenant_id: str,
                      code: str) -> None:
            async with limit:
                if "last_seen" in patch:
                    self.written[device_id] = now
                try:
                    await self.writer.update("devices", device_id, patch)
                except PocketBaseError as exc:
                    if exc.status != 404:
                        raise
                    if code:  # the row is gone: look again next time
                        self.forget(tenant_id, code, device_id)

        results = await asyncio.gather(*(one(*w) for w in writes), return_exceptions=True)
        failed = [(w, r) for w, r in zip(writes, results, strict=True)
                  if isinstance(r, BaseException)]
        if failed:
            metrics.PRESENCE_WRITE_FAILURES.inc(len(failed))
            log.warning("presence writes failed (retried with the next heartbeats)",
                        extra={"failed": len(failed), "error": str(failed[0][1])})
            for (device_id, patch, *_), _ in failed:  # the next beat tries again
                self.written.pop(device_id, None)
                if patch.get("online") is True:  # still offline in the row: a first beat
                    self.seen.pop(device_id, None)
                elif patch.get("online") is False and device_id not in self.seen:
                    self.seen[device_id] = now - OFFLINE_AFTER  # the next sweep tries again

    async def _drain_all(self, device_ids: list[str]) -> None:
        limit = asyncio.Semaphore(DRAINS)

        async def one(device_id: str) -> None:
            async with limit:
                await self.dispatcher.drain_queue(device_id)

        results = await asyncio.gather(*(one(d) for d in device_ids), return_exceptions=True)
        for device_id, result in zip(device_ids, results, strict=True):
            if isinstance(result, BaseException):
                self.dispatcher.offline.add(device_id)  # tried again on the next beat
                log.warning("queued commands not drained", extra={
                    "device": device_id, "error": str(result)})

    def _ignore(self, tenant_id: str, subject: str, reason: str) -> None:
        """Count a message that is not a heartbeat; warn at most once a minute."""
        metrics.HEARTBEATS_IGNORED.labels(reason.split(":", 1)[0]).inc()
        now = time.monotonic()
        if now - self._ignored_logged >= IGNORED_LOG_EVERY:
            self._ignored_logged = now
            log.warning("ignored a message on a heartbeat subject that is not a heartbeat "
                        "(further ones this minute are only counted)",
                        extra={"tenant": tenant_id, "subject": subject, "reason": reason})


def not_a_heartbeat(subject: str, reply: str | None, headers: Mapping[Any, str] | None,
                    data: bytes) -> str | None:
    """Why a message delivered to `agents.*.heartbeat` is not that agent's heartbeat, or None.

    The reason starts with its metric label ("subject", "server-reply", "server-header",
    "body"). A push delivery shows the stored message's subject, hence the subject check.
    The body must be the agent's document: `{"status": "alive", "version",
    "uptime_seconds", "timestamp", "device"?}`. `device` is checked when present: agents
    before it was added send none, and the headers and shape already tell JetStream's
    replies apart.
    """
    why = server_reply(reply)
    if why:
        return f"server-reply: {why}"
    header = server_header(headers)
    if header:
        return f"server-header: carries the server's {header} header"
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] != "agents" or parts[2] != "heartbeat":
        return f"subject: {subject[:80]!r} is not agents.<code>.heartbeat"
    code = parts[1]
    if len(data) > MAX_HEARTBEAT_BYTES:
        return f"body: {len(data)} bytes, a heartbeat is under {MAX_HEARTBEAT_BYTES}"
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return "body: not JSON"
    if not isinstance(doc, dict):
        return "body: not a JSON object"
    if doc.get("status") != "alive":
        return "body: status is not \"alive\" (a PubAck or API response?)"
    if not isinstance(doc.get("version"), str):
        return "body: no version"
    uptime = doc.get("uptime_seconds")
    if isinstance(uptime, bool) or not isinstance(uptime, int) or uptime < 0:
        return "body: no uptime_seconds"
    if not _is_rfc3339(doc.get("timestamp")):
        return "body: no RFC 3339 timestamp"
    if "device" in doc and doc["device"] != code:
        return f"body: device {str(doc['device'])[:64]!r} is not {code!r}"
    return None


def _is_rfc3339(value: Any) -> bool:
    if not isinstance(value, str) or "T" not in value:
        return False
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None
    except ValueError:
        return False
