"""Fleet simulator measurements: CPU and RSS of processes from /proc, and the broadcast
ping (one request per agent, one reply inbox, replies counted)."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (its threads included), from /proc/<pid>/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # fields 14 and 15 of stat(5)


def rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


async def cpu_percent(pids: dict[str, int], window: float) -> dict[str, float | None]:
    """% of one core each process used over `window` seconds (100 = one full core)."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    await asyncio.sleep(window)
    elapsed = time.monotonic() - t0
    out: dict[str, float | None] = {}
    for name, pid in pids.items():
        after = cpu_seconds(pid)
        start = before[name]
        out[name] = (round(100 * (after - start) / elapsed, 1)
                     if after is not None and start is not None else None)
    return out


async def single_latency(nc: NATS, code: str, n: int = 30) -> dict[str, float]:
    """Median and max of `n` sequential pings to one agent, in ms."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        reply = await nc.request(f"agents.{code}.cmd.ping", b"{}", timeout=10)
        times.append((time.perf_counter() - t0) * 1000)
        assert json.loads(reply.data)["status"] == "pong", reply.data
    return {"median_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2)}


async def broadcast_ping(nc: NATS, inbox_prefix: str, codes: list[str],
                         timeout: float = 60.0) -> dict[str, Any]:
    """One `ping` request per agent on `agents.<code>.cmd.ping`, all with one reply subject,
    published in one burst; seconds until every agent answered `pong` (counted)."""
    inbox = f"{inbox_prefix}.fleet.{os.urandom(6).hex()}"
    wanted = set(codes)
    errors = 0
    all_in = asyncio.Event()
    last = 0.0
    # a reply does not name its agent; each agent gets exactly one request
    count = 0

    async def counting(msg: Any) -> None:
        nonlocal count, last, errors
        try:
            ok = json.loads(msg.data).get("status") == "pong"
        except ValueError:
            ok = False
        if not ok:
            errors += 1
            return
        count += 1
        last = time.perf_counter()
        if count >= len(wanted):
            all_in.set()

    sub = await nc.subscribe(inbox, cb=counting)
    await asyncio.sleep(0)
    await nc.flush()
    await nc.flush()  # SPEC §10: one flush is not a barrier for the SUB
    t0 = time.perf_counter()
    for code in codes:
        await nc.publish(f"agents.{code}.cmd.ping", b"{}", reply=inbox)
    await nc.flush()
    published = time.perf_counter() - t0
    try:
        await asyncio.wait_for(all_in.wait(), timeout)
    except TimeoutError:
        pass
    await sub.unsubscribe()
    return {"agents": len(wanted), "replies": count, "errors": errors,
            "publish_s": round(published, 3),
            "all_answered_s": round(last - t0, 3) if count >= len(wanted) else None,
            "last_reply_s": round(last - t0, 3) if count else None}


async def wildcard_ping(nc: NATS, inbox_prefix: str, wait: float = 2.0) -> int:
    """Replies to one request on the literal subject `agents.*.cmd.ping`. A publish subject
    is not a pattern in NATS, and agents subscribe to their own literal subjects, so this is
    expected to reach no agent (recorded, not assumed)."""
    inbox = f"{inbox_prefix}.wild.{os.urandom(6).hex()}"
    got = 0

    async def on_reply(msg: Any) -> None:
        nonlocal got
        if msg.data and not (msg.headers or {}).get("Status"):
            got += 1

    sub = await nc.subscribe(inbox, cb=on_reply)
    await asyncio.sleep(0)
    await nc.flush()
    await nc.flush()
    await nc.publish("agents.*.cmd.ping", b"{}", reply=inbox)
    await nc.flush()
    await asyncio.sleep(wait)
    await sub.unsubscribe()
    return got


async def command_check(nc: NATS, code: str) -> dict[str, Any]:
    """One agent's answers to ping, health and inventory (the real handlers'), in short."""
    out: dict[str, Any] = {}
    for command in ("ping", "health", "inventory"):
        reply = json.loads((await nc.request(f"agents.{code}.cmd.{command}", b"{}",
                                             timeout=10)).data)
        out[command] = reply.get("status")
    return out
