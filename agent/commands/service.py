"""service: start, stop, restart or query a service named in `services.allowed`.

The name is checked (characters, then an exact whitelist match) before anything runs; a
whitelisted service that does not exist, or a machine whose service manager cannot
answer, gets a clean error reply with service_status "not-found" or "unknown".
"""

from __future__ import annotations

from typing import Any

from agent import services
from agent.commands.request import check
from agent.context import Context
from agent.errors import CommandError


async def handle(request: dict[str, Any], ctx: Context) -> dict[str, Any]:
    check(request, {"action": str, "service_name": str})
    action, name = request["action"], request["service_name"]
    if action not in services.ACTIONS:
        raise CommandError(f"action must be one of {', '.join(services.ACTIONS)}, "
                           f"got {_show(action)}")
    problem = services.name_problem(name)
    if problem:
        raise CommandError(problem)
    if name not in ctx.config.services.allowed:
        raise CommandError(f"service {name!r} is not in services.allowed")
    # The config has one timeout for everything the agent runs on request.
    result = await services.service_action(name, action, ctx.config.commands.timeout)
    reply: dict[str, Any] = {
        "status": "success" if result["ok"] else "error",
        "service_name": name,
        "action": action,
        "output": result["output"],
        "service_status": result["service_status"],
    }
    if "error" in result:
        reply["error"] = result["error"]
    return reply


def _show(text: str, limit: int = 40) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit] + "…"
