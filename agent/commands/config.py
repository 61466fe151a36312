"""config: the control plane's hint that this device's desired config changed.

The hint carries nothing: the agent fetches its desired config from the bridge over its
own connection (agent/control.py) and applies it with the usual bounds (agent/desired.py),
so a forged hint costs one fetch and changes nothing.
"""

from __future__ import annotations

from typing import Any

from agent.commands.request import check
from agent.context import Context
from agent.errors import CommandError


async def handle(request: dict[str, Any], ctx: Context) -> dict[str, Any]:
    check(request, {})
    if ctx.desired_changed is None:
        raise CommandError("desired config is not followed by this agent")
    ctx.desired_changed()
    return {"status": "success", "message": "fetching the desired config"}
