"""The command table: file name, table key and subject token are the same word.

Adding a command = one module with `async def handle(request, ctx) -> dict` + one row here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from agent.commands import (
    config,
    exec,
    health,
    inventory,
    logs,
    ping,
    rotate_creds,
    service,
)
from agent.context import Context

Handler = Callable[[dict[str, Any], Context], Awaitable[dict[str, Any]]]

COMMANDS: dict[str, Handler] = {
    "ping": ping.handle,
    "health": health.handle,
    "exec": exec.handle,
    "service": service.handle,
    "logs": logs.handle,
    "inventory": inventory.handle,
    "rotate_creds": rotate_creds.handle,
    "config": config.handle,
}
