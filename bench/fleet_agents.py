"""Simulated agents: enrolled devices as NATS clients, many in one process.

Each one answers commands with the real agent's dispatcher and handlers (agent/dispatcher.py,
queue group `cairn-agent`, its own inbox prefix `_INBOX_<code>`), publishes the real
heartbeat document (agent/telemetry.py `heartbeat_doc`, which the bridge's presence accepts)
and, when asked, a `telemetry.system` document through JetStream. The nkey seed and the JWT
stay in this process's memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import resource
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import nats
from nats.aio.client import Client as NATS

from agent.collectors.inventory import collect_inventory
from agent.config import AgentConfig, from_dict
from agent.context import VERSION, Context
from agent.dispatcher import Dispatcher, now_rfc3339
from agent.telemetry import heartbeat_doc
from cairn_common.link_settings import connection_status
from cairn_common.natsauth import connect_options, device_inbox

COMMAND_QUEUE = "cairn-agent"  # as agent/app.py subscribes (overlapping connections share)
log = logging.getLogger("bench.fleet")


@dataclass(frozen=True)
class AgentCreds:
    code: str
    jwt: str = field(repr=False)
    seed: str = field(repr=False)
    url: str  # the NATS node this agent connects to first (all nodes are its servers)


@dataclass(frozen=True)
class LoadConfig:
    servers: tuple[str, ...]
    heartbeat: float = 60.0  # seconds between heartbeats, +-10 % jitter; 0 = none
    telemetry: float = 300.0  # seconds between telemetry.system publishes; 0 = none
    connect_concurrency: int = 200


def raise_fd_limit(wanted: int) -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit; returns (soft, hard) afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def system_doc() -> dict[str, Any]:
    """A telemetry.system document of the real shape (values made up, source builtin)."""
    return {"cpu_percent": round(random.uniform(1, 60), 1), "memory_total_gb": 8.0,
            "memory_free_gb": round(random.uniform(1, 6), 2), "memory_used_percent": 40.0,
            "load_1m": round(random.uniform(0, 2), 2), "disks": [
                {"mount": "/", "total_gb": 100.0, "free_gb": 60.0, "free_percent": 60.0}],
            "network": {"rx_bytes_per_sec": 1000.0, "tx_bytes_per_sec": 500.0},
            "uptime_seconds": 3600, "source": "builtin", "timestamp": now_rfc3339()}


@dataclass
class Counters:
    connected: int = 0
    failed: int = 0
    heartbeats: int = 0
    telemetry: int = 0
    telemetry_failed: int = 0
    disconnects: int = 0
    errors: int = 0


class SimAgent:
    def __init__(self, creds: AgentCreds, base: AgentConfig, load: LoadConfig,
                 inventory: dict[str, Any], counters: Counters) -> None:
        self.creds = creds
        self.load = load
        self.counters = counters
        config = replace(base, device=replace(base.device, code=creds.code))
        self.nc: NATS | None = None
        self.ctx = Context(config=config, nats_status=self.nats_status,
                           inventory=self._inventory)
        self.dispatcher = Dispatcher(self.ctx)
        self._inventory_doc = inventory

    async def _inventory(self) -> dict[str, Any]:
        return {**self._inventory_doc, "timestamp": now_rfc3339()}

    def nats_status(self) -> dict[str, Any]:
        return connection_status(self.nc)

    async def connect(self) -> None:
        counters = self.counters

        async def on_error(exc: Exception) -> None:
            counters.errors += 1

        async def on_disconnect() -> None:
            counters.disconnects += 1

        first = [self.creds.url, *(s for s in self.load.servers if s != self.creds.url)]
        self.nc = await nats.connect(
            servers=first, name=f"cairn-sim/{self.creds.code}", dont_randomize=True,
            inbox_prefix=device_inbox(self.creds.code), ping_interval=20,
            max_outstanding_pings=3, reconnect_time_wait=1.0, max_reconnect_attempts=-1,
            connect_timeout=20, error_cb=on_error, disconnected_cb=on_disconnect,
            **connect_options(lambda: (self.creds.jwt, self.creds.seed)))
        await self.dispatcher.subscribe(self.nc, queue=COMMAND_QUEUE)

    async def heartbeat(self) -> None:
        nc = self.nc
        if nc is None or not nc.is_connected:
            return
        stats = self.ctx.stats
        doc = heartbeat_doc(self.creds.code, stats)
        await nc.publish(f"agents.{self.creds.code}.heartbeat", json.dumps(doc).encode())
        stats.heartbeat_count += 1
        stats.last_heartbeat = doc["timestamp"]
        self.counters.heartbeats += 1

    async def telemetry(self) -> None:
        nc = self.nc
        if nc is None or not nc.is_connected:
            return
        try:
            await nc.jetstream(timeout=10).publish(
                f"agents.{self.creds.code}.telemetry.system", json.dumps(system_doc()).encode(),
                headers={"Nats-Msg-Id": uuid.uuid4().hex})
            self.counters.telemetry += 1
        except (nats.errors.Error, TimeoutError, OSError):
            self.counters.telemetry_failed += 1

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.close()
            except Exception:  # already gone
                pass


async def _periodic(interval: float, work: Any) -> None:
    """`work()` every `interval` s +-10 %, first at a random point of the first period
    (a fleet's heartbeats are spread out, not synchronised)."""
    await asyncio.sleep(random.uniform(0, interval))
    while True:
        started = time.monotonic()
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:  # one failed publish never stops the loop
            pass
        await asyncio.sleep(max(0.0, interval * random.uniform(0.9, 1.1)
                                - (time.monotonic() - started)))


class Fleet:
    """The agents of one simulator process."""

    def __init__(self, creds: list[AgentCreds], load: LoadConfig) -> None:
        self.creds = creds
        self.load = load
        self.counters = Counters()
        self.agents: list[SimAgent] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def connect_all(self, progress: Any = None) -> float:
        """Connect every agent (bounded concurrency); seconds taken."""
        logging.getLogger("agent").setLevel(logging.WARNING)  # one INFO line per command
        base = from_dict({"device": {"code": "sim-base"}})
        inventory = await collect_inventory(VERSION)
        self.agents = [SimAgent(c, base, self.load, inventory, self.counters)
                       for c in self.creds]
        gate = asyncio.Semaphore(self.load.connect_concurrency)
        t0 = time.perf_counter()

        async def one(agent: SimAgent) -> None:
            async with gate:
                try:
                    await agent.connect()
                    self.counters.connected += 1
                except Exception as exc:
                    self.counters.failed += 1
                    if self.counters.failed <= 3:
                        log.warning("connect failed: %s: %s", agent.creds.code, exc)
            if progress is not None:
                progress(self.counters.connected, self.counters.failed)

        await asyncio.gather(*(one(a) for a in self.agents))
        return time.perf_counter() - t0

    def start_load(self) -> None:
        for agent in self.agents:
            if self.load.heartbeat > 0:
                self.tasks.append(asyncio.create_task(_periodic(self.load.heartbeat,
                                                                agent.heartbeat)))
            if self.load.telemetry > 0:
                self.tasks.append(asyncio.create_task(_periodic(self.load.telemetry,
                                                                agent.telemetry)))

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        gate = asyncio.Semaphore(500)

        async def one(agent: SimAgent) -> None:
            async with gate:
                await agent.close()

        await asyncio.gather(*(one(a) for a in self.agents))

    def answered(self) -> int:
        return sum(a.ctx.stats.commands_processed for a in self.agents)
