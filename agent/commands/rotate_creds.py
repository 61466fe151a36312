"""rotate_creds: new key pair, new JWT through PocketBase, reconnect with it.

The reply is sent on the current connection before it is replaced, so the caller always
gets an answer; the old key is revoked by the bridge once the new one is registered.
"""

from __future__ import annotations

from typing import Any

from agent.commands.request import check
from agent.context import Context
from agent.errors import CommandError


async def handle(request: dict[str, Any], ctx: Context) -> dict[str, Any]:
    check(request, {})
    if ctx.rotate_creds is None:
        raise CommandError("credential rotation is not available in this agent")
    return {"status": "success", **await ctx.rotate_creds()}
