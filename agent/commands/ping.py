"""ping: proves the agent is connected and answering."""

from __future__ import annotations

from typing import Any

from agent.commands.request import check
from agent.context import Context


async def handle(request: dict[str, Any], ctx: Context) -> dict[str, Any]:
    check(request, {})
    return {"status": "pong"}
