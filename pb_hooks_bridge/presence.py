"""Presence: `devices.last_seen` / `online` from heartbeats, written at most every 30 s per
device, and the trigger that drains a device's queued commands when it shows up."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from nats.aio.msg import Msg

from cairn_common.pocketbase import PocketBase
from pb_hooks_bridge.dispatch import CommandDispatcher, pb_now
from pb_hooks_bridge.writer import BatchWriter

log = logging.getLogger(__name__)

CODE = re.compile(r"^[a-z0-9-]{3,64}$")
WRITE_EVERY = 30.0  # seconds between last_seen writes for one device
OFFLINE_AFTER = 150.0  # no heartbeat for this long (2.5 x 60 s) -> offline


class Presence:
    def __init__(self, pb: PocketBase, dispatcher: CommandDispatcher) -> None:
        self.pb = pb
        self.dispatcher = dispatcher
        self.writer = BatchWriter(pb)
        self.seen: dict[str, float] = {}  # device id -> monotonic time of last heartbeat
        self.written: dict[str, float] = {}  # device id -> monotonic time of last write
        self.ids: dict[tuple[str, str], str] = {}  # (tenant id, code) -> device id
        self.tasks: set[asyncio.Task[Any]] = set()

    async def watch(self, tenant_id: str, nc: Any) -> None:
        """Subscribe to one tenant's heartbeats (called for each new tenant link)."""

        async def on_heartbeat(msg: Msg) -> None:
            code = msg.subject.split(".")[1]
            task = asyncio.create_task(self.heartbeat(tenant_id, code))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        await nc.subscribe("agents.*.heartbeat", cb=on_heartbeat)

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
            await self.writer.update("devices", device_id,
                                     {"last_seen": pb_now(), "online": True})

    async def sweep(self) -> int:
        """Mark devices offline whose heartbeats stopped."""
        now = time.monotonic()
        gone = [d for d, t in self.seen.items() if now - t >= OFFLINE_AFTER]
        for device_id in gone:
            del self.seen[device_id]
            self.written.pop(device_id, None)
            await self.writer.update("devices", device_id, {"online": False})
        return len(gone)

    async def _device_id(self, tenant_id: str, code: str) -> str | None:
        if not CODE.match(code):
            return None  # not a device subject we could have issued; never into a filter
        key = (tenant_id, code)
        if key not in self.ids:
            row = await self.pb.first("devices", f'tenant = "{tenant_id}" && code = "{code}"')
            if row is None:
                return None
            self.ids[key] = row["id"]
        return self.ids[key]
