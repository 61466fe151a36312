"""Presence's (tenant, code) -> device id cache follows device rows: a device deleted and
re-created with the same code shows online again and gets its queued commands
(pb_hooks_bridge/presence.py `forget`, called by the event router)."""

from __future__ import annotations

import asyncio
import contextlib
import json

from agent.context import Stats
from agent.telemetry import heartbeat_doc
from cairn_common.natsauth import device_inbox
from tests.live import (
    DEVICE_PASSWORD,
    Enrolled,
    account_ready,
    connect,
    enroll,
    eventually,
    new_device,
    new_tenant,
)


class FakeAgent:
    """Heartbeats every 0.3 s and answers every command, with the device's own creds."""

    def __init__(self, url: str, enrolled: Enrolled) -> None:
        self.url, self.enrolled = url, enrolled
        self.code = enrolled.device["code"]
        self.nc = None
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        e = self.enrolled
        self.nc = await connect(self.url, e.jwt, e.seed, inbox_prefix=device_inbox(self.code))

        async def answer(msg) -> None:
            await msg.respond(json.dumps({"status": "pong"}).encode())

        await self.nc.subscribe(f"agents.{self.code}.cmd.>", cb=answer)
        await self.nc.flush()
        self.task = asyncio.create_task(self._beat())

    async def _beat(self) -> None:
        stats = Stats()
        while True:
            await self.nc.publish(f"agents.{self.code}.heartbeat",
                                  json.dumps(heartbeat_doc(self.code, stats)).encode())
            await asyncio.sleep(0.3)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()


async def _online(admin, device_id: str) -> dict | None:
    row = await admin.get("devices", device_id)
    return row if row["online"] else None


async def test_recreated_device_shows_online_and_drains_its_queue(bridge, admin, pb_env,
                                                                  nats_env):
    tenant = await account_ready(admin, await new_tenant(admin))
    first = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    code = first.device["code"]
    agent = FakeAgent(nats_env.url, first)
    await agent.start()
    try:
        await eventually(lambda: _online(admin, first.device["id"]), 10, "first row online")
    finally:
        await agent.stop()
    await admin.delete("devices", first.device["id"])
    again = await admin.create("devices", {
        "tenant": tenant["id"], "code": code, "name": code, "password": DEVICE_PASSWORD,
        "passwordConfirm": DEVICE_PASSWORD})
    row = await admin.create("commands", {"tenant": tenant["id"], "device": again["id"],
                                          "command": "ping", "payload": {}})

    async def queued() -> bool:
        got = await admin.get("commands", row["id"])
        return got["status"] == "queued" and again["id"] in bridge.bridge.commands.offline

    await eventually(queued, 10, "the command queued for the offline device")
    second = await enroll(pb_env.url, admin, again)
    agent = FakeAgent(nats_env.url, second)
    await agent.start()
    try:
        await eventually(lambda: _online(admin, again["id"]), 5, "the new row online")

        async def ran() -> dict | None:
            got = await admin.get("commands", row["id"])
            return got if got["status"] == "succeeded" else None

        done = await eventually(ran, 5, "the queued command drained")
        assert done["response"] == {"status": "pong"}
    finally:
        await agent.stop()
