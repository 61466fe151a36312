"""Cut a revoked user's live connections at once, instead of when nats-server has finished
applying the account JWT that revokes it.

nats-server applies an account JWT that carries revocations by decoding and verifying
the user JWT of every connection of that account, one after another, and closes the
revoked ones as it meets them (SPEC §12). On this box that is ~0.13 ms per connection:
1.3 s for a tenant with 10,000 agents on one server, and the push's reply only comes
after it (docs/benchmarks.md, "Revocation at scale"). The revocation map itself is set
*before* that walk, so new connections of a revoked key are refused from the first
millisecond; only the live connection waits its turn.

So after the revoking push is published, the bridge asks each server, over a SYS
connection to that server alone, for that user's connections there
(`$SYS.REQ.ACCOUNT.<acc>.CONNZ`, filtered by user); waits until every server shows the
new revocation in force (`$SYS.REQ.ACCOUNT.<acc>.INFO`, `revoked_user`, in the server's
own time zone: a few ms after the push, or after an earlier walk on that server ends),
since a kicked device may reconnect to any of them; and only then kicks
(`$SYS.REQ.SERVER.<id>.KICK`). The device's immediate reconnect therefore meets the
revocation and is refused; a kick sent before that would let it straight back in. The
kick runs in a task of its own, outside the account's lock (pusher.py), and only speeds
things up: the push stays what makes a revocation hold (a kick that fails, or a server
that does not show the revocation within IN_FORCE_TIMEOUT, changes nothing but the
latency, and is counted). A client that names another key in its CONNECT is not found
by CONNZ's user filter; the walk, which reads the JWT, still closes it.

These run on SYS connections of their own, one per server: nats-server handles a claims
update inside the reading loop of the connection it came in on (the bridge's, or a route
from the server that forwarded it), so a request sent on the push's connection, or
forwarded over a route, would wait behind the very walk it is meant to overtake.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import datetime

import nats
from nats.aio.client import Client as NATS

from pb_hooks_bridge import metrics
from pb_hooks_bridge.broadcast import Broadcast, Reply

log = logging.getLogger(__name__)

# A bulk disable revokes many keys in one push; past this many, the push alone closes them
# (each kick costs a CONNZ per key, and the walk is the same length for one key or 500).
MAX_USERS_PER_PUSH = 64
IN_FLIGHT = 8
ASK_TIMEOUT = 1.0  # for the link's own server's answer to CONNZ / INFO
KICK_TIMEOUT = 1.0
IN_FORCE_POLL = 0.005  # between INFO requests while a server has not applied the push yet
IN_FORCE_TIMEOUT = 5.0  # past this, the server's own walk closes the connection


def newly_revoked(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """User keys (with their revocation time) the new revocations cut that the old ones
    did not: a key added, or its time moved forward. The all-users entry is left to the
    push: it ends the whole account."""
    return {k: ts for k, ts in sorted(after.items())
            if k != "*" and ts > before.get(k, -1)}


class Kicker:
    def __init__(self, links: list[Callable[[], NATS | None]],
                 guard: Callable[[], None] = lambda: None) -> None:
        # one SYS connection per server, each to that server alone: a request another
        # server forwards over a route waits behind the walk that route is busy with
        self._links = links
        self.guard = guard  # raises when this bridge may no longer act (leader.py)
        self._replies: dict[int, Broadcast] = {}  # per link

    async def kick(self, account: str, users: dict[str, int]) -> int:
        """Kick every live connection of `users` (key -> revocation time) in `account`,
        once every server shows that revocation in force (a kicked device may reconnect
        to any of them); returns how many were kicked. Never raises: a failure is logged
        and counted."""
        if not users:
            return 0
        if len(users) > MAX_USERS_PER_PUSH:
            metrics.KICKS.labels("skipped").inc(len(users))
            return 0
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(user: str) -> int:
            async with gate:
                return await self._kick_user(account, user, users[user])

        keys = list(users)
        done = await asyncio.gather(*(one(u) for u in keys), return_exceptions=True)
        kicked = 0
        for user, result in zip(keys, done, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                metrics.KICKS.labels("failed").inc()
                log.warning("could not kick a revoked user's connections (the account push "
                            "still closes them)", extra={"user": user, "error": repr(result)})
            else:
                kicked += result
        return kicked

    def _connected(self) -> list[tuple[int, NATS, str]]:
        """(link, connection, the id of the server it is connected to) of every link up."""
        up = []
        for link, current in enumerate(self._links):
            nc = current()
            server_id = str((getattr(nc, "_server_info", None) or {}).get("server_id") or "")
            if nc is not None and nc.is_connected and server_id:
                up.append((link, nc, server_id))
        return up

    async def _kick_user(self, account: str, user: str, revoked_at: int) -> int:
        self.guard()
        links = self._connected()
        if len(links) < len(self._links):
            metrics.KICKS.labels("no-link").inc()
        if not links:
            return 0
        clock = asyncio.get_running_loop().time
        began = clock()
        query = json.dumps({"auth": True, "user": user, "limit": 256}).encode()
        answers = await asyncio.gather(*(self._ask(
            link, nc, sid, f"$SYS.REQ.ACCOUNT.{account}.CONNZ", query) for link, nc, sid in links))
        found = [(nc, sid, cids) for (_, nc, sid), reply in zip(links, answers, strict=True)
                 if (cids := _connections_of(reply, user) if reply else [])]
        metrics.KICK_SECONDS.labels("find").observe(clock() - began)
        if not found:
            return 0
        began = clock()
        ready = await asyncio.gather(*(self._in_force_on(link, nc, sid, account, user,
                                                         revoked_at)
                                       for link, nc, sid in links))
        if not all(ready):
            metrics.KICKS.labels("not-in-force").inc(sum(len(c) for _, _, c in found))
            return 0
        metrics.KICK_SECONDS.labels("in-force").observe(clock() - began)
        kicked = 0
        for nc, sid, cids in found:
            for cid in cids:
                self.guard()
                sent = clock()
                kicked += await self._kick_one(nc, sid, cid)
                metrics.KICK_SECONDS.labels("kick").observe(clock() - sent)
        return kicked

    async def _in_force_on(self, link: int, nc: NATS, server_id: str, account: str,
                           user: str, revoked_at: int) -> bool:
        """Wait until this server shows the revocation (False: not within the timeout, or
        its answer cannot be read: the push's own walk is left to close the connection)."""
        deadline = asyncio.get_running_loop().time() + IN_FORCE_TIMEOUT
        while True:
            seen = _revoked_at(await self._ask(link, nc, server_id,
                                               f"$SYS.REQ.ACCOUNT.{account}.INFO", b""), user)
            if seen is None:
                return False
            if seen >= revoked_at:
                return True
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(IN_FORCE_POLL)

    async def _ask(self, link: int, nc: NATS, server_id: str, subject: str,
                   payload: bytes) -> Reply | None:
        """The answer of the link's own server to a request every server answers."""
        replies = self._replies.setdefault(link, Broadcast())
        got = await replies.gather(nc, subject, payload,
                                   lambda got: any(r.server_id == server_id for r in got),
                                   ASK_TIMEOUT, ASK_TIMEOUT)
        return next((r for r in got if r.server_id == server_id), None)

    async def _kick_one(self, nc: NATS, server_id: str, cid: int) -> int:
        try:
            msg = await nc.request(f"$SYS.REQ.SERVER.{server_id}.KICK",
                                   json.dumps({"cid": cid}).encode(), timeout=KICK_TIMEOUT)
        except (nats.errors.Error, TimeoutError) as exc:
            metrics.KICKS.labels("failed").inc()
            log.warning("kick request failed", extra={"server_id": server_id, "cid": cid,
                                                      "error": repr(exc)})
            return 0
        body = Reply.read(msg.data).body or {}
        if "error" in body:  # e.g. the connection closed meanwhile: nothing left to cut
            metrics.KICKS.labels("gone").inc()
            return 0
        metrics.KICKS.labels("kicked").inc()
        return 1


def _revoked_at(reply: Reply | None, user: str) -> int | None:
    """When this server's copy of the account revokes `user` (INFO's `revoked_user`, RFC
    3339 times in the server's own zone): -1 when not (yet) revoked, None when there is
    no answer or its time cannot be read."""
    if reply is None:
        return None
    data = (reply.body or {}).get("data")
    if not isinstance(data, dict):
        return None
    seen = data.get("revoked_user") or {}
    if not isinstance(seen, dict):
        return None
    if user not in seen:
        return -1
    return _epoch(seen[user])


def _epoch(stamp: object) -> int | None:
    if not isinstance(stamp, str):
        return None
    try:
        return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def _connections_of(reply: Reply, user: str) -> list[int]:
    """The cids of `user` in one server's CONNZ answer (the filter is checked again: an
    older server that ignores it must not make us kick everyone)."""
    data = (reply.body or {}).get("data")
    if not isinstance(data, dict) or not reply.server_id:
        return []
    found = []
    for conn in data.get("connections") or []:
        if isinstance(conn, dict) and conn.get("authorized_user") == user \
                and isinstance(conn.get("cid"), int):
            found.append(conn["cid"])
    return found
