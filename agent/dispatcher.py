"""One dispatcher for every command: decode, call the handler, encode, count.

Handlers never repeat this: a malformed request, a refused one (CommandError) and an
unexpected exception all become `{"status": "error", "error": ...}` replies, and a failing
handler never kills the subscription. Each request runs in its own task, so a 30 s exec
does not delay a ping.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from agent.commands import COMMANDS
from agent.context import Context
from agent.errors import CommandError

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 256 * 1024
REPLY_HEADROOM = 4096  # bytes left under max_payload for the JSON around a truncated field


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Dispatcher:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.inflight: set[asyncio.Task[None]] = set()
        self.accepting = True

    def subject(self) -> str:
        return f"agents.{self.ctx.config.device.code}.cmd.*"

    async def subscribe(self, nc: NATS) -> None:
        await nc.subscribe(self.subject(), cb=self._on_message)

    async def _on_message(self, msg: Msg) -> None:
        if not self.accepting:
            return  # draining for shutdown or rotation: the caller sees no reply, not a lie
        task = asyncio.create_task(self.handle(msg), name=f"cmd:{msg.subject}")
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    async def handle(self, msg: Msg) -> None:
        command = msg.subject.rsplit(".", 1)[-1]
        reply = await self.run(command, msg.data)
        if not msg.reply:
            return
        try:
            await msg.respond(encode(reply, msg._client.max_payload))
        except Exception as exc:  # connection gone mid-reply: nothing else to tell anyone
            log.warning("could not send reply", extra={"command": command, "error": str(exc)})

    async def run(self, command: str, data: bytes) -> dict[str, Any]:
        stats = self.ctx.stats
        stats.commands_processed += 1
        try:
            handler = COMMANDS.get(command)
            if handler is None:
                raise CommandError(f"unknown command {command!r} "
                                   f"(known: {', '.join(sorted(COMMANDS))})")
            reply = await handler(decode(data), self.ctx)
        except CommandError as exc:
            reply = {"status": "error", "error": str(exc)}
        except Exception as exc:
            log.exception("command handler crashed", extra={"command": command})
            reply = {"status": "error", "error": f"internal error in {command}: "
                                                 f"{exc.__class__.__name__}"}
        if reply.get("status") == "error":
            stats.commands_errored += 1
        reply["timestamp"] = now_rfc3339()
        log.info("command", extra={"command": command, "status": reply.get("status")})
        return reply

    async def drain(self, grace: float) -> None:
        """Stop taking commands and let in-flight ones finish (bounded)."""
        self.accepting = False
        if self.inflight:
            await asyncio.wait(set(self.inflight), timeout=grace)


def decode(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_REQUEST_BYTES:
        raise CommandError(f"request too large ({len(data)} bytes, max {MAX_REQUEST_BYTES})")
    if not data.strip():
        return {}
    try:
        request = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CommandError(f"request is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise CommandError(f"request must be a JSON object, got {type(request).__name__}")
    return request


def encode(reply: dict[str, Any], max_payload: int) -> bytes:
    """JSON under the server's max payload: an oversized output is cut and flagged."""
    body = json.dumps(reply, default=str).encode()
    if len(body) <= max_payload:
        return body
    budget = max(0, max_payload - REPLY_HEADROOM)
    for key in ("output", "lines"):
        if key in reply:
            value = reply[key]
            if isinstance(value, list):
                kept: list[Any] = []
                size = 0
                for line in reversed(value):  # keep the newest log lines
                    size += len(json.dumps(line)) + 1
                    if size > budget:
                        break
                    kept.append(line)
                reply[key] = list(reversed(kept))
            else:
                text = value if isinstance(value, str) else json.dumps(value)
                reply[key] = text.encode()[:budget].decode(errors="ignore")
            reply["truncated"] = True
            body = json.dumps(reply, default=str).encode()
            if len(body) <= max_payload:
                return body
    return json.dumps({"status": "error", "error": "reply too large for the NATS max payload",
                       "timestamp": reply.get("timestamp")}).encode()
