"""TELEMETRY is R3 on a 3-node cluster and loses no acknowledged message when any node is
killed with -9, the stream leader included (issue 12, SPEC §10).

A device publishes the way the agent does (agent/telemetry.py `publish_acked`: each
message keeps its Nats-Msg-Id across resends, "no stream response" is retried with
backoff) while first the stream leader, then a follower, is killed and started again.
"""

from __future__ import annotations

import asyncio
import json
import time

import nats
from nats.js.api import DeliverPolicy

from agent.telemetry import Pending, publish_acked
from cairn_common import creds
from cairn_common.natsauth import device_inbox, service_inbox
from tests.cluster.conftest import provisioned_tenant
from tests.live import connect, enroll, eventually, new_device

PROGRESS = 40  # acknowledged messages after a kill that show publishing goes on


class Publisher:
    """Publishes numbered telemetry until stopped; remembers every acknowledged id."""

    def __init__(self, nc: nats.NATS, code: str) -> None:
        self.nc, self.code = nc, code
        self.acked: list[str] = []
        self.stopping = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name="test-publisher")

    async def _run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            item = Pending(f"agents.{self.code}.telemetry.system",
                           json.dumps({"n": n}).encode(), f"{self.code}-{n}")
            while not self.stopping.is_set():  # like the agent's buffer: until acked
                try:
                    await publish_acked(self.nc, item)
                except (nats.errors.Error, TimeoutError, OSError):
                    await asyncio.sleep(0.05)
                    continue
                self.acked.append(item.msg_id)
                break
            await asyncio.sleep(0.005)

    async def progressed(self, since: int) -> bool:
        return len(self.acked) >= since + PROGRESS

    async def stop(self) -> None:
        self.stopping.set()
        await self.task


async def answered(ask, timeout: float = 30.0):
    """A JetStream API answer once the cluster has one: right after a kill -9 the meta or
    stream leader may be the dead node, and a request times out until a new one is elected."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await ask()
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def replicas_current(js, count: int = 3) -> bool:
    cluster = (await answered(lambda: js.stream_info("TELEMETRY"))).cluster
    peers = (cluster.replicas or []) if cluster else []
    return bool(cluster and cluster.leader) and len(peers) == count - 1 and all(
        p.current and not p.offline for p in peers)


async def stored_ids(nc, js) -> list[str]:
    """Every message id in TELEMETRY, in stream order (an ordered consumer)."""
    total = (await answered(lambda: js.stream_info("TELEMETRY"))).state.messages
    sub = await answered(lambda: js.subscribe("agents.*.telemetry.>", stream="TELEMETRY",
                                              ordered_consumer=True,
                                              deliver_policy=DeliverPolicy.ALL))
    ids = []
    try:
        while len(ids) < total:
            msg = await sub.next_msg(timeout=5)
            ids.append(msg.headers.get("Nats-Msg-Id") if msg.headers else None)
    finally:
        await sub.unsubscribe()
    return ids


async def test_telemetry_r3_keeps_every_acked_message_across_kill_9(cluster, cluster_bridge,
                                                                    cluster_admin, cluster_pb):
    await cluster.meta_ready()
    tenant = await provisioned_tenant(cluster_admin)
    device = await enroll(cluster_pb.url, cluster_admin, await new_device(cluster_admin, tenant))
    code = device.device["code"]
    svc = await eventually(lambda: cluster_admin.first(
        "nats_users", f'tenant = "{tenant["id"]}" && name = "cairn-bridge" && creds != ""'), 10)
    reader = await connect(cluster.urls, *creds.parse(svc["creds"]), allow_reconnect=True,
                           max_reconnect_attempts=-1, reconnect_time_wait=0.1,
                           inbox_prefix=service_inbox("cairn-bridge"))
    js = reader.jetstream(timeout=5)
    for name in ("TELEMETRY", "ALERTS"):
        assert (await js.stream_info(name)).config.num_replicas == 3
    await eventually(lambda: replicas_current(js), 20, "TELEMETRY R3 with every replica current")
    device_nc = await connect(cluster.urls, device.jwt, device.seed, allow_reconnect=True,
                              max_reconnect_attempts=-1, reconnect_time_wait=0.1,
                              inbox_prefix=device_inbox(code))
    publisher = Publisher(device_nc, code)
    try:
        await eventually(lambda: publisher.progressed(0), 10, "first acknowledged messages")
        for role in ("leader", "follower"):
            info = (await answered(lambda: js.stream_info("TELEMETRY"))).cluster
            name = info.leader if role == "leader" else info.replicas[0].name
            victim = cluster.node(name)
            before, killed = len(publisher.acked), time.monotonic()
            victim.kill()
            await eventually(lambda before=before: publisher.progressed(before), 30,
                             f"publishing after the stream {role} was killed")
            print(f"stream {role} {name} killed: publishing went on after "
                  f"{time.monotonic() - killed:.2f} s")
            victim.start()
            await eventually(lambda: replicas_current(js), 30, f"{name} current again")
    finally:
        await publisher.stop()
        await device_nc.close()
    try:
        stored = await stored_ids(reader, js)
    finally:
        await reader.close()
    assert len(stored) == len(set(stored)), "a resend was stored twice"
    missing = set(publisher.acked) - set(stored)
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
