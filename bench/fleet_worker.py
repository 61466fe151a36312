"""One fleet simulator child process: `python -m bench.fleet_worker`.

Reads one JSON line on stdin (`{"load": LoadConfig fields, "agents": [AgentCreds fields]}`),
connects its agents, and then answers line commands on stdin (`stats`, `stop`). Everything
it says is a JSON line on stdout: `limits`, `progress`, `connected`, `stats`, `stopped`.
(The creds arrive over a pipe, never in a file or on the command line.)
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from dataclasses import asdict
from typing import Any

from bench.fleet_agents import AgentCreds, Fleet, LoadConfig, raise_fd_limit

PROGRESS_EVERY = 0.5  # seconds


def say(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / (1024 * 1024)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def serve(fleet: Fleet) -> None:
    last = 0.0

    def progress(connected: int, failed: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY:
            last = now
            say("progress", connected=connected, failed=failed)

    seconds = await fleet.connect_all(progress)
    c = fleet.counters
    say("connected", seconds=seconds, connected=c.connected, failed=c.failed, rss_mb=rss_mb())
    fleet.start_load()
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            command = line.strip()
            if command == "stats":
                say("stats", **asdict(fleet.counters), answered=fleet.answered(),
                    rss_mb=rss_mb(), cpu_s=cpu_seconds())
            elif command in ("stop", ""):  # "" = the parent closed our stdin
                break
    finally:
        await fleet.close()
        say("stopped", **asdict(fleet.counters), answered=fleet.answered(), rss_mb=rss_mb())


def main() -> None:
    job = json.loads(sys.stdin.readline())
    agents = [AgentCreds(**a) for a in job["agents"]]
    load = LoadConfig(**{**job["load"], "servers": tuple(job["load"]["servers"])})
    soft, hard = raise_fd_limit(len(agents) + 100)
    say("limits", soft=soft, hard=hard, agents=len(agents))
    if len(agents) + 50 > soft:
        say("error", error=f"{len(agents)} agents need more open files than this process may "
            f"have (soft limit {soft}, hard {hard}): use more --processes")
        sys.exit(2)
    asyncio.run(serve(Fleet(agents, load)))


if __name__ == "__main__":
    main()
