"""Failure drills under load (issue 12): kill -9 PocketBase, the agent and nats-server while
command rows keep coming, each then started again. Judged from outside: every command
runs exactly once (a script appends to a file of its own), and a revocation made after
each recovery still cuts the device off (with a device that keeps working as control).
The bridge's and router's own kills are drilled in tests/bridge/test_two_bridges.py and
tests/router/test_two_routers.py; a cluster node's in tests/cluster/."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from cairn_common.pocketbase import PocketBase, PocketBaseError
from cairn_stack.processes import ManagedProcess
from tests.live import (
    account_ready,
    connect,
    enroll,
    enrolled_agent_site,
    eventually,
    new_device,
)


class Load:
    """Creates an `exec canary.sh <file>` row every `every` seconds, riding out a
    PocketBase that is down (a failed create is tried again, never skipped)."""

    def __init__(self, admin: PocketBase, tenant: dict, device: dict, out: Path, name: str,
                 every: float = 0.3) -> None:
        self.admin, self.tenant, self.device, self.out = admin, tenant, device, out
        self.name, self.every = name, every
        self.rows: list[tuple[str, Path]] = []
        self.task: asyncio.Task | None = None

    async def one(self) -> None:
        path = self.out / f"{self.name}-{len(self.rows):03d}.txt"
        while True:
            try:
                row = await self.admin.create("commands", {
                    "tenant": self.tenant["id"], "device": self.device["id"],
                    "command": "exec", "payload": {"command": "canary.sh",
                                                   "args": [str(path)]}})
                self.rows.append((row["id"], path))
                return
            except (PocketBaseError, OSError):
                await asyncio.sleep(0.2)  # PocketBase is down: the same command again

    def start(self, count: int) -> None:
        async def run() -> None:
            for _ in range(count):
                await self.one()
                await asyncio.sleep(self.every)
        self.task = asyncio.create_task(run(), name="chaos-load")

    async def done(self, timeout: float) -> None:
        if self.task is not None:
            await asyncio.wait_for(self.task, timeout)
        await eventually(self._all_finished, timeout, "every command finished")
        for row_id, path in self.rows:
            row = await self.admin.get("commands", row_id)
            assert row["status"] == "succeeded", (row_id, row["status"], row.get("error"))
            assert path.read_text() == "ran\n", f"{path.name} ran {path.read_text()!r}"

    async def _all_finished(self) -> bool:
        for row_id, _ in self.rows:
            if (await self.admin.get("commands", row_id))["status"] not in (
                    "succeeded", "failed", "expired"):
                return False
        return True


def _agent(site, log: Path) -> ManagedProcess:
    proc = ManagedProcess(name="agent", argv=[sys.executable, "-m", "agent", "run",
                                              "--config", str(site.config_path)],
                          log_path=log)
    proc.start()
    return proc


async def _revocation_holds(admin, pb_env, nats_env, tenant) -> None:
    """A device disabled now is cut off; one left alone keeps its connection."""
    doomed = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    kept = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    closed = asyncio.Event()

    async def on_closed():
        closed.set()

    nc = await connect(nats_env.url, doomed.jwt, doomed.seed, closed_cb=on_closed)
    control = await connect(nats_env.url, kept.jwt, kept.seed)
    try:
        await admin.update("devices", doomed.device["id"], {"status": "disabled"})
        await asyncio.wait_for(closed.wait(), 10)
        assert nc.is_closed
        await control.flush()
        assert control.is_connected
    finally:
        await control.close()


@pytest.mark.timeout(300)
async def test_kill_9_drills_under_load(bridge, admin, pb_env, nats_env, tmp_path_factory):
    directory = tmp_path_factory.mktemp("chaos")
    site = await enrolled_agent_site(admin, pb_env.url, nats_env.url, directory)
    tenant = await account_ready(admin, site.tenant)
    out = directory / "runs"
    out.mkdir()
    agent = _agent(site, directory / "agent.log")
    try:
        await eventually(lambda: _online(admin, site.device["id"]), 30, "agent online")

        # PocketBase dies mid-stream and comes back
        load = Load(admin, tenant, site.device, out, "pocketbase")
        load.start(12)
        await eventually(lambda: _at_least(load.rows, 3), 20, "load running")
        await asyncio.to_thread(pb_env.restart, True)
        await load.done(90)
        await _revocation_holds(admin, pb_env, nats_env, tenant)

        # the agent dies; commands made meanwhile wait, run once when it is back
        agent.kill()
        load = Load(admin, tenant, site.device, out, "agent")
        offset = len(list(out.iterdir()))
        for _ in range(3):
            await load.one()
        for row_id, _ in load.rows:
            await eventually(lambda r=row_id: _status(admin, r, "queued"), 20, "queued")
        agent = _agent(site, directory / "agent.log")
        await load.done(60)
        assert len(list(out.iterdir())) == offset + 3

        # nats-server dies and comes back: the agent and the bridge reconnect
        await asyncio.to_thread(nats_env.restart, True)
        load = Load(admin, tenant, site.device, out, "nats")
        load.start(3)
        await load.done(90)
        await _revocation_holds(admin, pb_env, nats_env, tenant)
    finally:
        agent.stop()


async def _online(admin, device_id: str) -> bool:
    return bool((await admin.get("devices", device_id)).get("online"))


async def _status(admin, row_id: str, status: str) -> bool:
    return (await admin.get("commands", row_id))["status"] == status


async def _at_least(items: list, n: int) -> bool:
    return len(items) >= n

