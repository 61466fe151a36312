"""inventory: the same document the agent publishes on telemetry.inventory."""

from __future__ import annotations

from typing import Any

from agent.commands.request import check
from agent.context import Context
from agent.errors import CommandError


async def handle(request: dict[str, Any], ctx: Context) -> dict[str, Any]:
    check(request, {})
    if ctx.inventory is None:
        raise CommandError("inventory is not available in this agent")
    return {"status": "success", **await ctx.inventory()}
