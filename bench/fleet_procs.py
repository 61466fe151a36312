"""Fleet simulator child processes: each takes a slice of the enrolled agents over a pipe
(bench/fleet_worker.py), connects them, and reports JSON lines that are gathered here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.fleet_agents import AgentCreds, LoadConfig
from bench.fleet_enroll import Bar, Enrolled

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Child:
    index: int
    agents: int
    proc: asyncio.subprocess.Process
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    connected: int = 0
    failed: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None


class Simulators:
    """K simulator processes, agents dealt out in order (agent i -> node i % len(nodes))."""

    def __init__(self, enrolled: list[Enrolled], processes: int, load: LoadConfig) -> None:
        self.load = load
        self.slices: list[list[AgentCreds]] = [[] for _ in range(max(1, processes))]
        servers = load.servers
        for i, agent in enumerate(enrolled):
            creds = AgentCreds(agent.code, agent.jwt, agent.seed, servers[i % len(servers)])
            self.slices[i % len(self.slices)].append(creds)
        self.children: list[Child] = []

    async def start(self) -> None:
        load = {**asdict(self.load), "servers": list(self.load.servers)}
        for index, part in enumerate(self.slices):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.fleet_worker", cwd=ROOT,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                limit=16 * 1024 * 1024)
            child = Child(index, len(part), proc)
            self.children.append(child)
            assert proc.stdin is not None
            job = {"load": load, "agents": [asdict(a) for a in part]}
            proc.stdin.write(json.dumps(job).encode() + b"\n")
            await proc.stdin.drain()
            child.reader = asyncio.create_task(self._read(child))

    async def _read(self, child: Child) -> None:
        assert child.proc.stdout is not None
        async for line in child.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            name = event.pop("event", "")
            child.events[name] = event
            if name in ("progress", "connected"):
                child.connected, child.failed = event["connected"], event["failed"]
            child.changed.set()
        child.events.setdefault("exited", {"code": await child.proc.wait()})
        child.changed.set()

    async def wait_connected(self, timeout: float) -> dict[str, Any]:
        """Until every child has connected its slice (or died); with a progress bar."""
        total = sum(c.agents for c in self.children)
        bar = Bar("connect", total)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            done = [c for c in self.children if "connected" in c.events or "exited" in c.events]
            connected = sum(c.connected for c in self.children)
            failed = sum(c.failed for c in self.children)
            bar.update(connected, f"failed {failed}" if failed else "")
            if len(done) == len(self.children):
                break
            if loop.time() > deadline:
                raise TimeoutError(f"simulators not connected within {timeout:.0f} s")
            for c in self.children:
                c.changed.clear()
            waits = [asyncio.create_task(c.changed.wait()) for c in self.children]
            await asyncio.wait(waits, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
        bar.done(connected, f"failed {failed}" if failed else "")
        problems = [c.events.get("error", {}).get("error") or f"exited {c.events['exited']}"
                    for c in self.children if "connected" not in c.events]
        if problems:
            raise RuntimeError(f"a simulator process failed: {problems[0]}")
        return {"connected": connected, "failed": failed,
                "seconds_per_process": [round(c.events["connected"]["seconds"], 2)
                                        for c in self.children],
                "fd_limit": [c.events.get("limits", {}).get("soft") for c in self.children]}

    async def stats(self) -> list[dict[str, Any]]:
        for child in self.children:
            child.events.pop("stats", None)
            assert child.proc.stdin is not None
            child.proc.stdin.write(b"stats\n")
            await child.proc.stdin.drain()
        for _ in range(200):
            if all("stats" in c.events or "exited" in c.events for c in self.children):
                break
            await asyncio.sleep(0.05)
        return [c.events.get("stats", {}) for c in self.children]

    @property
    def pids(self) -> list[int]:
        return [c.proc.pid for c in self.children]

    async def stop(self) -> None:
        for child in self.children:
            with contextlib.suppress(Exception):
                assert child.proc.stdin is not None
                child.proc.stdin.write(b"stop\n")
                await child.proc.stdin.drain()
                child.proc.stdin.close()
        for child in self.children:
            try:
                await asyncio.wait_for(child.proc.wait(), 60)
            except TimeoutError:
                child.proc.kill()
                await child.proc.wait()
            if child.reader is not None:
                await asyncio.gather(child.reader, return_exceptions=True)
