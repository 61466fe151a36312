"""Presence: `devices.last_seen` / `online` from heartbeats, written at most every 30 s per
device, and the trigger that drains a device's queued commands when it shows up.

Only heartbeats count. NATS does not check a publisher's reply subject against its
permissions, and JetStream answers into it with the account's own client: a device's
telemetry publish or a service user's direct get with reply `agents.<other>.heartbeat`
makes the server publish a PubAck, a stored message or a `Status: 404` there, which would
mark an offline device online and drain its queued commands. So a message with JetStream's
headers, a server reply subject (a consumer delivery), or a body that is not the agent's
heartbeat document (agent/telemetry.py `heartbeat_doc`) is ignored and counted
(`cairn_bridge_heartbeats_ignored_total{reason}`), with a warning at most once a minute.

Heartbeats name a device by code; the (tenant, code) -> device id cache is reset by the
event router when a device row is created or deleted (`forget`), so a device deleted and
re-created with the same code shows online again and gets its queued commands. A lookup
that raced with such a reset is not cached, and a write to a row that is gone drops the
entry too.

Subscriptions are in the queue group QUEUE: while a renewed tenant link overlaps the old
one (links.py), each heartbeat is still counted once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from nats.aio.msg import Msg

from cairn_common.pocketbase import PocketBase, PocketBaseError
from cairn_common.server_messages import server_header, server_reply
from pb_hooks_bridge import metrics
from pb_hooks_bridge.dispatch import CommandDispatcher, pb_now
from pb_hooks_bridge.writer import BatchWriter

log = logging.getLogger(__name__)

CODE = re.compile(r"^[a-z0-9-]{3,64}$")
WRITE_EVERY = 30.0  # seconds between last_seen writes for one device
OFFLINE_AFTER = 150.0  # no heartbeat for this long (2.5 x 60 s) -> offline
MAX_HEARTBEAT_BYTES = 16 * 1024  # a real one is ~120 bytes
IGNORED_LOG_EVERY = 60.0  # seconds between warnings about ignored heartbeats
QUEUE = "cairn-bridge"  # the bridge's queue group in tenant accounts (links.py)


class Presence:
    def __init__(self, pb: PocketBase, dispatcher: CommandDispatcher) -> None:
        self.pb = pb
        self.dispatcher = dispatcher
        self.writer = BatchWriter(pb)
        self.seen: dict[str, float] = {}  # device id -> monotonic time of last heartbeat
        self.written: dict[str, float] = {}  # device id -> monotonic time of last write
        self.ids: dict[tuple[str, str], str] = {}  # (tenant id, code) -> device id
        self.generation = 0  # bumped by forget(): lookups begun before it are not cached
        self.tasks: set[asyncio.Task[Any]] = set()
        self._ignored_logged = -math.inf  # monotonic time of the last "ignored" warning

    async def watch(self, tenant_id: str, nc: Any) -> None:
        """Subscribe to one tenant's heartbeats (called for each new tenant link)."""

        async def on_heartbeat(msg: Msg) -> None:
            reason = not_a_heartbeat(msg.subject, msg.reply, msg.headers, msg.data)
            if reason is not None:
                self._ignore(tenant_id, msg.subject, reason)
                return
            metrics.HEARTBEATS.inc()
            code = msg.subject.split(".")[1]
            task = asyncio.create_task(self.heartbeat(tenant_id, code))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        await nc.subscribe("agents.*.heartbeat", queue=QUEUE, cb=on_heartbeat)

    def forget(self, tenant_id: str, code: str, device_id: str = "") -> None:
        """A device row was created or deleted: drop what was cached for its code (and, for
        a deleted row, everything about its id)."""
        self.generation += 1
        self.ids.pop((tenant_id, code), None)
        if device_id:
            for key in [k for k, v in self.ids.items() if v == device_id]:
                del self.ids[key]
            self.seen.pop(device_id, None)
            self.written.pop(device_id, None)
            self.dispatcher.offline.discard(device_id)

    def _ignore(self, tenant_id: str, subject: str, reason: str) -> None:
        """Count a message that is not a heartbeat; warn at most once a minute."""
        metrics.HEARTBEATS_IGNORED.labels(reason.split(":", 1)[0]).inc()
        now = time.monotonic()
        if now - self._ignored_logged >= IGNORED_LOG_EVERY:
            self._ignored_logged = now
            log.warning("ignored a message on a heartbeat subject that is not a heartbeat "
                        "(further ones this minute are only counted)",
                        extra={"tenant": tenant_id, "subject": subject, "reason": reason})

    async def heartbeat(self, tenant_id: str, code: str) -> None:
        device_id = await self._device_id(tenant_id, code)
        if device_id is None:
            return
        now = time.monotonic()
        was_seen = device_id in self.seen and now - self.seen[device_id] < OFFLINE_AFTER
        self.seen[device_id] = now
        if not was_seen or device_id in self.dispatcher.offline:
            self.dispatcher.offline.discard(device_id)
            await self.dispatcher.drain_queue(device_id)
        if not was_seen or now - self.written.get(device_id, 0) >= WRITE_EVERY:
            self.written[device_id] = now
            try:
                await self.writer.update("devices", device_id,
                                         {"last_seen": pb_now(), "online": True})
            except PocketBaseError as exc:
                if exc.status != 404:
                    raise
                self.forget(tenant_id, code, device_id)  # the row is gone: look again

    async def sweep(self) -> int:
        """Mark devices offline whose heartbeats stopped."""
        now = time.monotonic()
        gone = [d for d, t in self.seen.items() if now - t >= OFFLINE_AFTER]
        for device_id in gone:
            del self.seen[device_id]
            self.written.pop(device_id, None)
            try:
                await self.writer.update("devices", device_id, {"online": False})
            except PocketBaseError as exc:
                if exc.status != 404:  # a deleted row needs no "offline"
                    raise
        return len(gone)

    async def _device_id(self, tenant_id: str, code: str) -> str | None:
        if not CODE.match(code):
            return None  # not a device subject we could have issued; never into a filter
        key = (tenant_id, code)
        known = self.ids.get(key)
        if known is not None:
            return known
        generation = self.generation
        row = await self.pb.first("devices", f'tenant = "{tenant_id}" && code = "{code}"')
        if row is None:
            return None
        if generation == self.generation:  # no create/delete event came meanwhile
            self.ids[key] = row["id"]
        return str(row["id"])


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
