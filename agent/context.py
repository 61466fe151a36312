"""What a command handler may use: the config, counters, and a view of the connection."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent.config import AgentConfig

VERSION = "0.1.0"


@dataclass
class Stats:
    """Counters the health command reports; owned by the app, updated by its tasks."""

    started_monotonic: float = field(default_factory=time.monotonic)
    commands_processed: int = 0
    commands_errored: int = 0
    commands_dropped: int = 0  # command-subject messages that were not requests (not run)
    heartbeat_count: int = 0
    metrics_count: int = 0
    metrics_failures: int = 0
    last_heartbeat: str | None = None
    last_metrics: str | None = None
    reconnect_times: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    telemetry_buffered: int = 0
    telemetry_dropped: int = 0

    def reconnects_last_hour(self) -> int:
        horizon = time.monotonic() - 3600
        return sum(1 for t in self.reconnect_times if t >= horizon)


@dataclass
class Context:
    config: AgentConfig
    stats: Stats = field(default_factory=Stats)
    nats_status: Callable[[], dict[str, Any]] = lambda: {"connected": False}
    inventory: Callable[[], Awaitable[dict[str, Any]]] | None = None
    rotate_creds: Callable[[], Awaitable[dict[str, Any]]] | None = None
    desired_changed: Callable[[], None] | None = None  # the `config` hint
