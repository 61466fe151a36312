"""Requests every server answers: `$SYS.REQ.CLAIMS.*` and `$SYS.REQ.SERVER.PING` are
subscribed by each node of a cluster, so one publish gets one reply per server (SPEC §10).

nats-py's `request` keeps only the first; `Broadcast.gather` keeps them all, on one
wildcard inbox subscription per connection (made again when the SYS link reopens).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg


@dataclass(frozen=True)
class Reply:
    server: str  # the answering server's name ("" when the body does not say, e.g. a JWT)
    server_id: str
    data: bytes
    body: dict[str, Any] | None  # the JSON body, None when it is not JSON

    @classmethod
    def read(cls, data: bytes) -> Reply:
        try:
            body = json.loads(data) if data[:1] == b"{" else None
        except ValueError:
            body = None
        info = body.get("server") if isinstance(body, dict) else None
        info = info if isinstance(info, dict) else {}
        return cls(str(info.get("name") or ""), str(info.get("id") or ""), data,
                   body if isinstance(body, dict) else None)


Done = Callable[[list[Reply]], bool]


class Broadcast:
    def __init__(self) -> None:
        self._nc: NATS | None = None
        self._prefix = ""
        self._waiting: dict[str, asyncio.Queue[Msg]] = {}
        self._tokens = itertools.count(1)
        self._lock = asyncio.Lock()

    async def _ready(self, nc: NATS) -> str:
        async with self._lock:
            if nc is not self._nc:
                prefix = nc.new_inbox()
                await nc.subscribe(f"{prefix}.*", cb=self._on_reply)
                await asyncio.sleep(0)  # SUB then one PING is no barrier (SPEC §10)
                await nc.flush()
                self._nc, self._prefix = nc, prefix
            return self._prefix

    async def _on_reply(self, msg: Msg) -> None:
        queue = self._waiting.get(msg.subject.rsplit(".", 1)[-1])
        if queue is not None:
            queue.put_nowait(msg)

    async def gather(self, nc: NATS, subject: str, payload: bytes, done: Done,
                     first_timeout: float, rest_timeout: float,
                     sent: asyncio.Event | None = None) -> list[Reply]:
        """Publish once; collect replies until `done(replies)`, `first_timeout` without any,
        or, after the first, `rest_timeout` or as long as the first took (the longer).
        Raises nats errors of the publish. `sent` is set once the message is handed to the
        connection."""
        prefix = await self._ready(nc)
        token = str(next(self._tokens))
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._waiting[token] = queue
        loop = asyncio.get_running_loop()
        replies: list[Reply] = []
        try:
            await nc.publish(subject, payload, reply=f"{prefix}.{token}")
            started = loop.time()
            if sent is not None:
                sent.set()
            deadline = loop.time() + first_timeout
            while not done(replies):
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    msg = await asyncio.wait_for(queue.get(), left)
                except TimeoutError:
                    break
                if not replies:  # the others get at least as long as the first took: a
                    # server busy applying a big account JWT answers late, not never
                    deadline = min(deadline, loop.time() + max(rest_timeout,
                                                                loop.time() - started))
                replies.append(Reply.read(msg.data))
            return replies
        finally:
            del self._waiting[token]
