"""Lanes that cannot starve each other (pb_hooks_bridge/lanes.py): the rules on their own,
then 200 hung commands against a revocation on the real stack."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from cairn_common import creds
from cairn_common.natsauth import device_inbox, service_inbox
from pb_hooks_bridge.lanes import COMMANDS, IDENTITY, Lanes, Pool
from tests.live import account_ready, connect, enroll, eventually, new_device, new_tenant


async def test_per_key_order_and_per_group_bound():
    lanes = Lanes({IDENTITY: Pool(8), COMMANDS: Pool(10, per_group=2)})
    order: list[int] = []
    running = {"a": 0, "b": 0}
    peak = {"a": 0, "b": 0}
    b_done = asyncio.Event()

    async def step(i: int) -> None:
        order.append(i)
        await asyncio.sleep(0.001)

    async def hold(group: str) -> None:
        running[group] += 1
        peak[group] = max(peak[group], running[group])
        if group == "a":
            await b_done.wait()  # group a stays busy until group b got through
        else:
            await asyncio.sleep(0.01)
        running[group] -= 1

    for i in range(30):
        lanes.submit("one-record", lambda i=i: step(i))
    a = [lanes.submit(f"dev-a{i}", lambda: hold("a"), pool=COMMANDS, group="a")
         for i in range(6)]
    b = [lanes.submit(f"dev-b{i}", lambda: hold("b"), pool=COMMANDS, group="b")
         for i in range(2)]
    await asyncio.wait_for(asyncio.gather(*b), 2)  # b is not held back by a's busy slots
    b_done.set()
    await asyncio.wait_for(asyncio.gather(*a), 2)
    await lanes.drain(1)
    assert order == list(range(30))
    assert peak == {"a": 2, "b": 2}
    assert not lanes.locks and not lanes.groups


async def test_nested_work_never_exhausts_the_pool():
    """One slot in all: a task holding it waits for another key whose own task holds that
    key's lock and waits for the slot. Lending the slot back is what lets both finish."""
    lanes = Lanes(1)
    inner_ran = asyncio.Event()
    outer_started = asyncio.Event()

    async def outer() -> str:
        outer_started.set()
        await asyncio.sleep(0.01)  # meanwhile "user" is queued: it holds its key's lock
        result = await lanes.nested("user", lambda: _value("nested"))
        again = await lanes.nested("tenant", lambda: _value("reentrant"))  # its own key
        return f"{result}+{again}"

    async def inner() -> None:
        inner_ran.set()

    task = asyncio.create_task(lanes.call("tenant", outer))
    await outer_started.wait()
    lanes.submit("user", inner)
    assert await asyncio.wait_for(task, 2) == "nested+reentrant"
    assert inner_ran.is_set()
    assert lanes.limits[IDENTITY]._value == 1, "the slot was not given back exactly once"


async def _value(text: str) -> str:
    await asyncio.sleep(0)
    return text


class Fleet:
    """Answers every device's presence probe in one tenant; `exec` requests are kept and
    never answered while `hung`."""

    def __init__(self) -> None:
        self.hung = True
        self.execs = 0
        self.nc = None

    async def start(self, url: str, row: dict) -> None:
        jwt, seed = creds.parse(row["creds"])
        self.nc = await connect(url, jwt, seed, inbox_prefix=service_inbox("fleet-test"))

        async def answer(msg) -> None:
            command = msg.subject.rsplit(".", 1)[1]
            if command == "exec":
                self.execs += 1
                if self.hung:
                    return
                await msg.respond(b'{"status": "ok", "output": "", "exit_code": 0}')
                return
            await msg.respond(b'{"status": "pong"}')

        await self.nc.subscribe("agents.*.cmd.>", cb=answer)
        await self.nc.flush()


async def _responder(url: str, enrolled) -> object:
    code = enrolled.device["code"]
    nc = await connect(url, enrolled.jwt, enrolled.seed, inbox_prefix=device_inbox(code))

    async def answer(msg) -> None:
        await msg.respond(json.dumps({"status": "pong"}).encode())

    await nc.subscribe(f"agents.{code}.cmd.>", cb=answer)
    await nc.flush()
    return nc


async def _statuses(admin, tenant_id: str) -> dict[str, int]:
    rows = await admin.list("commands", filter=f'tenant = "{tenant_id}"', fields="status")
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"] or "queued"] = counts.get(row["status"] or "queued", 0) + 1
    return counts


@pytest.mark.timeout(180)
async def test_hung_commands_never_delay_a_revocation(bridge, admin, pb_env, nats_env):
    """200 `exec` commands hang in tenant A (100 devices that answer the presence probe but
    never the command); a device disabled in tenant B is still cut off in under a second,
    and B's own commands still run."""
    busy = await account_ready(admin, await new_tenant(admin))
    calm = await account_ready(admin, await new_tenant(admin))
    limit = asyncio.Semaphore(16)

    async def device(tenant):
        async with limit:
            return await new_device(admin, tenant)

    devices = await asyncio.gather(*(device(busy) for _ in range(100)))
    svc = await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{busy["id"]}" && name = "cairn-bridge" && creds != ""'), 10)
    fleet = Fleet()
    await fleet.start(nats_env.url, svc)
    victim = await enroll(pb_env.url, admin, await new_device(admin, calm))
    worker = await enroll(pb_env.url, admin, await new_device(admin, calm))
    closed = asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    victim_nc = await connect(nats_env.url, victim.jwt, victim.seed, closed_cb=on_closed,
                              inbox_prefix=device_inbox(victim.device["code"]))
    worker_nc = await _responder(nats_env.url, worker)
    try:
        async def command(dev):
            async with limit:
                return await admin.create("commands", {
                    "tenant": busy["id"], "device": dev["id"], "command": "exec",
                    "payload": {"command": "true", "timeout": 3}})

        await asyncio.gather(*(command(devices[i % 100]) for i in range(200)))

        async def in_flight() -> dict[str, int] | None:
            counts = await _statuses(admin, busy["id"])
            return counts if counts.get("sent", 0) >= 16 else None

        counts = await eventually(in_flight, 20, "A's commands sent and hanging")
        assert counts["sent"] <= 16, counts  # bounded per tenant
        assert fleet.execs >= 16

        started = time.perf_counter()
        await admin.update("devices", victim.device["id"], {"status": "disabled"})
        await asyncio.wait_for(closed.wait(), 5)
        elapsed = time.perf_counter() - started
        assert elapsed < 1.0, f"the revocation waited {elapsed:.2f}s behind hung commands"
        with pytest.raises(Exception):  # noqa: B017 (any refusal: the key is revoked)
            await connect(nats_env.url, victim.jwt, victim.seed, max_reconnect_attempts=0)

        # control: B's commands run while A's still hang
        row = await admin.create("commands", {"tenant": calm["id"],
                                              "device": worker.device["id"],
                                              "command": "ping", "payload": {}})

        async def done():
            got = await admin.get("commands", row["id"])
            return got if got["status"] == "succeeded" else None

        await eventually(done, 10, "tenant B's command completed")
        assert (await _statuses(admin, busy["id"])).get("sent", 0) >= 1, "A's hang on"
    finally:
        fleet.hung = False  # the rest complete at once; the hung ones time out

        async def drained() -> bool:
            counts = await _statuses(admin, busy["id"])
            return set(counts) <= {"succeeded", "failed", "expired"}

        await eventually(drained, 60, "tenant A's commands finished")
        await fleet.nc.close()
        await worker_nc.close()
        if not victim_nc.is_closed:
            await victim_nc.close()
