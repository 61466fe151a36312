"""health: the agent's self-diagnostics (architecture overview, "Self-Diagnostics")."""

from __future__ import annotations

import resource
import sys
import threading
import time
from typing import Any

from agent.collectors.inventory import os_info
from agent.commands.request import check
from agent.context import VERSION, Context, Stats


async def handle(request: dict[str, Any], ctx: Context) -> dict[str, Any]:
    check(request, {})
    return report(ctx)


def report(ctx: Context) -> dict[str, Any]:
    nats = ctx.nats_status()
    stats = ctx.stats
    return {
        "status": status(nats.get("connected", False), stats),
        "agent": {
            "version": VERSION,
            "uptime_seconds": int(time.monotonic() - stats.started_monotonic),
            "threads": threading.active_count(),
            "memory_mb": round(_rss_mb(), 1),
        },
        "nats": nats,
        "tasks": {
            "last_heartbeat": stats.last_heartbeat,
            "last_metrics": stats.last_metrics,
            "heartbeat_count": stats.heartbeat_count,
            "metrics_count": stats.metrics_count,
            "metrics_failures": stats.metrics_failures,
            "telemetry_buffered": stats.telemetry_buffered,
            "telemetry_dropped": stats.telemetry_dropped,
        },
        "commands": {"processed": stats.commands_processed, "errored": stats.commands_errored,
                     "dropped": stats.commands_dropped},
        "os": os_info(),
    }


def status(connected: bool, stats: Stats) -> str:
    """unhealthy when disconnected; degraded when over half the scrapes failed (all of them
    included: the Go agent reported healthy then) or over 10 reconnects in the last hour."""
    if not connected:
        return "unhealthy"
    attempts = stats.metrics_count + stats.metrics_failures
    if attempts and stats.metrics_failures * 2 > attempts:
        return "degraded"
    if stats.reconnects_last_hour() > 10:
        return "degraded"
    return "healthy"


def _rss_mb() -> float:
    """Current RSS from /proc on Linux; peak RSS elsewhere (what getrusage offers)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * resource.getpagesize() / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
