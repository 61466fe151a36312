"""Two bridges at once (pb_hooks_bridge/leader.py): one leads, the other stands by and
takes over within 10 s of the leader's kill -9, with a revocation and a command made
during the gap both applied, the command sent once; a leader paused past its lease never
pushes again after it wakes up."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import nats
import pytest

from bench.bridges import BridgeProcess
from cairn_common.filemodes import write_private
from cairn_common.natsauth import device_inbox
from tests.live import account_ready, connect, enroll, eventually, new_device, new_tenant


@pytest.fixture
async def two_bridges(bridge, pb_env, nats_env):
    await bridge.stop()  # the suite's in-process bridge would lead
    login = nats_env.layout.secrets_dir / "two-bridges-login.json"
    write_private(login, json.dumps({"email": pb_env.admin_email,
                                     "password": pb_env.admin_password}))
    procs: list[BridgeProcess] = []

    def spawn(name: str) -> BridgeProcess:
        procs.append(BridgeProcess(name, nats_env.layout, pb_env.url, nats_env.url, login))
        return procs[-1]

    try:
        yield spawn
    finally:
        for p in procs:
            if p.proc.proc is not None and p.proc.running:
                os.kill(p.proc.proc.pid, signal.SIGCONT)
            p.proc.stop()
        await bridge.start()


class Answering:
    """A device that answers every command and counts what it got."""

    def __init__(self) -> None:
        self.got: list[str] = []

    async def start(self, nats_env, enrolled):
        code = enrolled.device["code"]
        self.nc = await connect(nats_env.url, enrolled.jwt, enrolled.seed,
                                inbox_prefix=device_inbox(code))

        async def answer(msg):
            self.got.append(msg.subject)
            await msg.respond(json.dumps({"status": "pong"}).encode())

        await self.nc.subscribe(f"agents.{code}.cmd.>", cb=answer)
        await self.nc.flush()
        return self


@pytest.mark.timeout(240)
async def test_standby_takes_over_a_killed_leader(two_bridges, admin, pb_env, nats_env):
    a = two_bridges("bridge-a")
    await a.until("cairn_bridge_leader", 1, 60)
    await a.until("cairn_bridge_reconciliations_total", 1, 60)
    b = two_bridges("bridge-b")
    await b.until("cairn_bridge_leader", 0, 60)  # up, serving metrics, standing by
    tenant = await account_ready(admin, await new_tenant(admin))
    doomed = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    kept = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    closed = asyncio.Event()

    async def on_closed():
        closed.set()

    doomed_nc = await connect(nats_env.url, doomed.jwt, doomed.seed, closed_cb=on_closed,
                              inbox_prefix=device_inbox(doomed.device["code"]))
    device = await Answering().start(nats_env, kept)
    try:
        a.proc.kill()  # kill -9: no lease released, nothing drained
        killed = time.monotonic()
        await admin.update("devices", doomed.device["id"], {"status": "disabled"})
        row = await admin.create("commands", {"tenant": tenant["id"],
                                              "device": kept.device["id"], "command": "health"})
        took_over = await b.until("cairn_bridge_leader", 1, 15)
        assert took_over < 10, f"standby took {took_over:.1f} s"
        await asyncio.wait_for(closed.wait(), 20)  # the revocation made in the gap holds
        done = await eventually(lambda: _finished(admin, row["id"]), 20, "command done")
        assert done["status"] == "succeeded"
        # sent once (the bridge's presence probes are pings)
        assert [s for s in device.got if not s.endswith(".ping")] == [
            f"agents.{kept.device['code']}.cmd.health"]
        gap = time.monotonic() - killed
        assert gap < 30
    finally:
        await device.nc.close()
        if not doomed_nc.is_closed:
            await doomed_nc.close()


@pytest.mark.timeout(240)
async def test_a_paused_leader_never_pushes_after_its_lease_ran_out(two_bridges, admin,
                                                                    pb_env, nats_env):
    a = two_bridges("bridge-a")
    await a.until("cairn_bridge_leader", 1, 60)
    await a.until("cairn_bridge_reconciliations_total", 1, 60)
    b = two_bridges("bridge-b")
    await b.until("cairn_bridge_leader", 0, 60)
    tenant = await account_ready(admin, await new_tenant(admin))
    first = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    pushes_before = a.value("cairn_bridge_account_pushes_total")
    os.kill(a.proc.proc.pid, signal.SIGSTOP)  # a long pause: the lease runs out meanwhile
    try:
        await b.until("cairn_bridge_leader", 1, 20)
        # the paused leader has this event queued in its socket when it wakes up
        await admin.update("devices", first.device["id"], {"status": "disabled"})
        await asyncio.sleep(1)  # let the event reach both (the paused one only buffers it)
    finally:
        os.kill(a.proc.proc.pid, signal.SIGCONT)
    await a.until("cairn_bridge_leader", 0, 20)  # it knows it lost, and stands by again
    await a.until("cairn_bridge_leases_lost_total", 1, 20)
    assert a.value("cairn_bridge_account_pushes_total") == pushes_before
    assert b.value("cairn_bridge_leader") == 1
    # the new leader applies the disable (its first full pass may still be running)

    async def refused() -> bool:
        try:
            nc = await connect(nats_env.url, first.jwt, first.seed)
        except nats.errors.Error:
            return True
        await nc.close()
        return False

    await eventually(refused, 30, "the disabled device's key refused")


async def _finished(admin, row_id: str) -> dict | None:
    row = await admin.get("commands", row_id)
    return row if row["status"] in ("succeeded", "failed", "expired") else None
