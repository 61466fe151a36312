"""One dispatcher for every command: decode, call the handler, encode, count.

Handlers never repeat this: a malformed request, a refused one (CommandError) and an
unexpected exception all become `{"status": "error", "error": ...}` replies, and a failing
handler never kills the subscription. Each request runs in its own task, so a 30 s exec
does not delay a ping.

Only real requests run. NATS does not check a publisher's reply subject against its
permissions, and JetStream answers into that reply subject with the account's own client:
anyone who may publish to JetStream (a device publishing its own telemetry, a service
user's direct get, a consumer's deliver subject) can make the server put a PubAck, a stored
message or an empty `Status: 404` into `agents.<code>.cmd.<anything>`. Such messages have
no reply subject (or one under `$JS.`, for consumer deliveries) or carry JetStream's
headers, which a requester never sends; they are dropped unrun and counted
(`commands.dropped` in health) and logged at most once a minute.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from agent.commands import COMMANDS
from agent.context import Context
from agent.errors import CommandError
from cairn_common.json_body import BodyError, parse_object
from cairn_common.server_messages import server_header, server_reply

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 256 * 1024
REPLY_HEADROOM = 4096  # bytes left under max_payload for the JSON around a truncated field
DROP_LOG_EVERY = 60.0  # seconds: a flood of forged messages is one warning a minute


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Dispatcher:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.inflight: set[asyncio.Task[None]] = set()
        self.accepting = True
        self.subscriptions: list[Any] = []
        # keeps the connection a request came on from retiring until its reply is sent
        # (a reply is only allowed on that connection); set by the app to link.take
        self.take: Callable[[Any], Callable[[], None]] | None = None
        self._drop_logged = -math.inf  # monotonic time of the last "dropped" warning

    def subject(self) -> str:
        return f"agents.{self.ctx.config.device.code}.cmd.*"

    async def subscribe(self, nc: NATS, queue: str = "") -> None:
        self.subscriptions = [s for s in self.subscriptions if not s._conn.is_closed]
        self.subscriptions.append(await nc.subscribe(self.subject(), queue=queue,
                                                     cb=self._on_message))

    async def unsubscribe(self) -> None:
        """Leave the command queue on every connection (another member takes requests)."""
        subs, self.subscriptions = self.subscriptions, []
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # its connection is already gone
                log.debug("unsubscribe failed", extra={"error": str(exc)})

    async def _on_message(self, msg: Msg) -> None:
        refused = not_a_request(msg.reply, msg.headers)
        if refused is None and msg.subject.rsplit(".", 1)[0] != self.subject()[:-2]:
            # a push delivery shows the stored message's subject, not ours
            refused = f"subject {msg.subject[:80]!r} is not one of our command subjects"
        if refused is not None:
            self._drop(msg.subject, refused)
            return
        if not self.accepting:
            return  # draining for shutdown or rotation: the caller sees no reply, not a lie
        # taken here, before the callback returns: a connection retiring after this
        # callback waits for the reply
        release = self.take(msg._client) if self.take is not None else None
        task = asyncio.create_task(self.handle(msg), name=f"cmd:{msg.subject}")
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)
        if release is not None:
            task.add_done_callback(lambda _: release())

    def _drop(self, subject: str, reason: str) -> None:
        """Count a message that is not a request; warn at most once a minute."""
        stats = self.ctx.stats
        stats.commands_dropped += 1
        now = time.monotonic()
        if now - self._drop_logged >= DROP_LOG_EVERY:
            self._drop_logged = now
            log.warning("dropped a message on a command subject that is not a request "
                        "(not run; further ones this minute are only counted)",
                        extra={"subject": subject, "reason": reason,
                               "dropped": stats.commands_dropped})

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


def not_a_request(reply: str | None, headers: Mapping[Any, str] | None) -> str | None:
    """Why a message on a command subject is not a requester's request, or None when it is
    (cairn_common/server_messages.py)."""
    if not reply:
        return "no reply subject"
    why = server_reply(reply)
    if why:
        return why
    if not reply.startswith("_INBOX"):
        # every requester Cairn issues replies under its own _INBOX_* prefix (nats' default
        # is _INBOX.): a reply aimed elsewhere would make this device publish where it may
        # not, e.g. a person's request steering a pong into another device's heartbeat
        return f"reply subject {reply[:80]!r} is not an inbox"
    header = server_header(headers)
    return f"carries the server's {header} header" if header else None


def decode(data: bytes) -> dict[str, Any]:
    try:
        return parse_object(data, MAX_REQUEST_BYTES)
    except BodyError as exc:
        raise CommandError(str(exc)) from None


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
