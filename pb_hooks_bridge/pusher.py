"""Push account JWTs to nats-server over the system account, one account at a time.

Per account, pushes are serialized under the account's lock and coalesced: whoever holds
the lock signs the *current* state, so a stale JWT can never follow a newer one (the full
resolver would accept it and silently undo a revocation, SPEC §10).

In a cluster every server answers a push (broadcast.py). The pusher waits for one reply
from each server it believes up (servers.py), sends the same JWT again to those that did
not answer, and marks whoever still did not as owed: when that server is seen again,
every account is pushed again (`repush`, driven by cluster_watch.py). On one node this is
one reply, as before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import nats
import nkeys
from nats.aio.client import Client as NATS

from cairn_common import natsjwt
from cairn_common.pocketbase import PocketBase, PocketBaseError
from cairn_common.tasks import cancel_and_wait
from pb_hooks_bridge import metrics
from pb_hooks_bridge.accounts import MAX_IAT_LEAD, Account
from pb_hooks_bridge.broadcast import Broadcast, Reply
from pb_hooks_bridge.errors import BridgeError
from pb_hooks_bridge.kicker import Kicker, newly_revoked
from pb_hooks_bridge.servers import ServerRoster

log = logging.getLogger(__name__)

CLAIMS_UPDATE = "$SYS.REQ.CLAIMS.UPDATE"
CLAIMS_DELETE = "$SYS.REQ.CLAIMS.DELETE"
CLAIMS_LIST = "$SYS.REQ.CLAIMS.LIST"
SERVER_PING = "$SYS.REQ.SERVER.PING"
NATS_ERRORS = (nats.errors.Error, TimeoutError)


class PushError(BridgeError):
    """The server refused an account JWT or did not answer."""


class Pusher:
    def __init__(self, nc: NATS, pb: PocketBase, operator: nkeys.KeyPair, system_account: str,
                 window: float = 0.01, timeout: float = 15.0, straggle: float = 0.5,
                 resends: int = 1) -> None:
        self.nc = nc
        self.system_account = system_account
        self.pb = pb
        self.operator = operator
        self.window = window
        # for the first reply: nats-server answers a push only after re-checking every
        # connection of the account (~0.13 ms each, kicker.py), and handles the pushes of
        # one SYS connection one after another, so a push can wait for a few big ones
        self.timeout = timeout
        self.straggle = straggle  # for the other servers' replies after the first
        self.resends = resends  # extra sends to servers that did not answer
        self.roster = ServerRoster()
        self.replies = Broadcast()
        # raises when this bridge may no longer push (leader.py: a paused ex-leader)
        self.guard: Callable[[], None] = lambda: None
        # cuts the live connections a push revokes without waiting for the server's walk
        self.kicker: Kicker | None = None
        self.kicks: set[asyncio.Task[None]] = set()  # running, see _send_and_kick

    async def push(self, account: Account, resend: bool = False) -> bool:
        """Make the server hold the account's current state; True when a new JWT was signed.

        A caller whose change another caller's push already carried returns at once;
        `resend` sends even an unchanged JWT (reconciliation: the server may have lost it).
        """
        account.wanted += 1
        generation = account.wanted
        async with account.lock:
            if account.pushed >= generation and not resend:
                return False
            self.guard()  # before signing and writing the row: an ex-leader writes nothing
            if not account.server_checked:
                await self._catch_up_iat(account)
            if self.window:
                await asyncio.sleep(self.window)  # let concurrent changes pile in
            lead = account.last_iat + 1 - int(time.time())
            if lead > MAX_IAT_LEAD:
                await asyncio.sleep(lead - MAX_IAT_LEAD)
            target = account.wanted
            signed = not account.same_content(account.jwt)
            cut: dict[str, int] = {}
            if signed:
                cut = newly_revoked(_revocations(account.jwt), account.desired_revocations())
                token = account.sign(self.operator)
                # the row first: after a crash, PocketBase holds a JWT at least as new as
                # the server's, so reconciliation never goes backwards
                try:
                    await self.pb.update("nats_accounts", account.row_id, {
                        "jwt": token, "revocations": account.revocations,
                    })
                except PocketBaseError as exc:
                    if exc.status != 404:
                        raise
                    # the row went with its tenant (a cascade delete): this push, which
                    # drops the tenant's connections, must still go out
            await self._send_and_kick(account, cut)
            account.pushed = target
            return signed

    async def _send_and_kick(self, account: Account, cut: dict[str, int]) -> None:
        """Send the JWT and, once it is on its way, kick the keys it newly revokes
        (kicker.py) in a task of its own: a kick may wait seconds for a slow server, and
        must not hold the account's lock meanwhile (a re-push to a server that missed
        this push needs it). The push's outcome is what counts: a kick never fails it."""
        if not cut or self.kicker is None:
            await self.send_update(account.jwt)
            return
        sent = asyncio.Event()
        kicker = self.kicker

        async def kick_once_sent() -> None:
            await sent.wait()
            await kicker.kick(account.public_key, cut)

        kicking = asyncio.create_task(kick_once_sent(), name=f"kick:{account.slug}")
        self.kicks.add(kicking)
        kicking.add_done_callback(self.kicks.discard)
        kicking.add_done_callback(_kick_done)
        try:
            await self.send_update(account.jwt, sent)
        except BaseException:
            if not sent.is_set():  # never published: nothing to kick for
                kicking.cancel()
            raise

    async def close(self) -> None:
        """Stop the kicks still running (the pushes they follow hold without them)."""
        await cancel_and_wait(list(self.kicks))

    async def _catch_up_iat(self, account: Account) -> None:
        """Start above the server's copy: after PocketBase is restored from a backup, its
        stored JWT may be older than the server's, whose iat would make pushes fail."""
        token = await self.lookup(account.public_key)
        if token:
            try:
                account.last_iat = max(account.last_iat,
                                       int(natsjwt.decode(token, verify=False).get("iat", 0)))
            except natsjwt.JwtError:
                pass
        account.server_checked = True

    async def send_update(self, token: str, sent: asyncio.Event | None = None) -> set[str]:
        """Send one account JWT to every server; returns the names that took it. `sent` is
        set once the first send is on the connection."""
        started = time.perf_counter()
        replies = await self._to_every_server(CLAIMS_UPDATE, token.encode(), "update", sent)
        metrics.PUSHES.inc()
        metrics.PUSH_SECONDS.observe(time.perf_counter() - started)
        return {r.server for r in replies}

    async def repush(self, account: Account, still_wanted: Callable[[], bool]) -> bool:
        """Send the account's last JWT again (a server came back), under its lock so it can
        never follow a newer one; skipped when `still_wanted()` says the account is gone
        or has none yet. True when sent."""
        async with account.lock:
            if not account.jwt or not still_wanted():
                return False
            await self.send_update(account.jwt)
            return True

    async def delete(self, account_public_keys: list[str]) -> None:
        """Remove accounts from the resolver (operator-signed request)."""
        claims: dict[str, Any] = {
            "sub": self.operator.public_key.decode(),
            "nats": {"accounts": account_public_keys, "type": "generic", "version": 2},
        }
        token = natsjwt.encode(claims, self.operator)
        await self._to_every_server(CLAIMS_DELETE, token.encode(), "delete")

    async def lookup(self, account_public_key: str) -> str:
        """The account JWT the servers hold now, the newest (greatest iat) of their copies
        ('' when none). PushError when the servers cannot be asked."""
        subject = f"$SYS.REQ.ACCOUNT.{account_public_key}.CLAIMS.LOOKUP"
        count = max(1, len(self.roster.expected()))
        replies = await self._gather(subject, b"", lambda got: len(got) >= count)
        if not replies:
            raise PushError(f"{subject}: no answer")
        return max((r.data.decode() for r in replies), key=_iat)

    async def list_accounts(self) -> list[str]:
        """Every account any server's resolver holds (PushError when none can be asked)."""
        replies = await self._gather(CLAIMS_LIST, b"", self._heard_all(self.roster.expected()))
        if not replies:
            raise PushError(f"{CLAIMS_LIST}: no answer")
        accounts: dict[str, None] = {}
        for reply in replies:
            body = reply.body
            if body is None:
                raise PushError(f"{CLAIMS_LIST}: unreadable reply {reply.data[:200]!r}")
            if "error" in body:
                raise PushError(f"{CLAIMS_LIST}: refused by nats-server: {body['error']}")
            accounts.update(dict.fromkeys(body.get("data") or []))
        return list(accounts)

    async def survey(self, timeout: float = 1.0) -> set[str]:
        """Ask every server for its statsz (`$SYS.REQ.SERVER.PING`): who is up now. Waits
        for as many as the JetStream cluster has peers (or as were known), else `timeout`."""
        roster = self.roster

        def heard_all(got: list[Reply]) -> bool:
            for reply in got:
                roster.saw(reply.server, reply.server_id, (reply.body or {}).get("statsz"))
            want = max(roster.size_hint, len(roster.servers), 1)
            return len({r.server for r in got}) >= want

        replies = await self._gather(SERVER_PING, b"", heard_all, timeout, timeout)
        names = {r.server for r in replies if r.server}
        roster.surveyed(names)
        return names

    async def _to_every_server(self, subject: str, payload: bytes, what: str,
                               sent: asyncio.Event | None = None) -> list[Reply]:
        """Publish to every server, send again to the up ones that did not answer, and
        owe a re-push to whoever still did not. PushError on no answer or any refusal."""
        self.guard()
        if not self.roster.seeded:
            await self._seed()
        expected = self.roster.expected()
        replies = await self._gather(subject, payload, self._heard_all(expected), sent=sent)
        if not replies:
            metrics.PUSH_FAILURES.inc()
            raise PushError(f"account {what} got no answer")
        for attempt in range(self.resends):
            missing = expected - {r.server for r in replies}
            if not missing:
                break
            log.warning("NATS servers did not answer an account push; sending again",
                        extra={"servers": sorted(missing), "what": what,
                               "attempt": attempt + 1})
            replies += await self._gather(subject, payload, self._heard_all(missing))
        for reply in replies:
            self.roster.saw(reply.server, reply.server_id)
            self._check(reply.data, what, reply.server)
        missing = self.roster.answered({r.server for r in replies})
        if missing:
            log.warning("NATS servers missed an account push; they get every account again "
                        "when they are back", extra={"servers": sorted(missing), "what": what})
        return replies

    async def _seed(self) -> None:
        try:
            await self.survey()
        except PushError as exc:
            log.warning("could not survey the NATS servers", extra={"error": str(exc)})

    @staticmethod
    def _heard_all(expected: set[str]) -> Callable[[list[Reply]], bool]:
        """Done when every expected server answered (when none is known: the first)."""
        if not expected:
            return lambda got: bool(got)
        return lambda got: expected <= {r.server for r in got}

    async def _gather(self, subject: str, payload: bytes, done: Callable[[list[Reply]], bool],
                      first_timeout: float | None = None, rest_timeout: float | None = None,
                      sent: asyncio.Event | None = None) -> list[Reply]:
        """A broadcast on the system account; raw nats errors become PushError."""
        if subject in (CLAIMS_UPDATE, CLAIMS_DELETE):
            self.guard()  # at every send, resends included (leader.py: fencing)
        try:
            return await self.replies.gather(
                self.nc, subject, payload, done,
                self.timeout if first_timeout is None else first_timeout,
                self.straggle if rest_timeout is None else rest_timeout, sent)
        except NATS_ERRORS as exc:
            metrics.PUSH_FAILURES.inc()
            raise PushError(f"{subject}: {exc.__class__.__name__}: {exc}") from exc

    @staticmethod
    def _check(data: bytes, what: str, server: str = "") -> None:
        try:
            body = json.loads(data)
        except ValueError as exc:
            metrics.PUSH_FAILURES.inc()
            raise PushError(f"account {what}: unreadable reply {data[:200]!r}") from exc
        if not isinstance(body, dict) or "error" in body:
            metrics.PUSH_FAILURES.inc()
            error = body.get("error") if isinstance(body, dict) else body
            raise PushError(f"account {what} refused by nats-server {server}: {error}")


def _kick_done(task: asyncio.Task[None]) -> None:
    """Kicks log and count their own failures; anything else escaping is a bug, logged."""
    if not task.cancelled() and task.exception() is not None:
        metrics.KICKS.labels("failed").inc()
        log.error("kick task failed", extra={"task": task.get_name(),
                                             "error": repr(task.exception())})


def _revocations(token: str) -> dict[str, int]:
    """The revocations an account JWT carries ({} when there is none or it is unreadable:
    then every current revocation counts as new, which at worst kicks a closed key)."""
    if not token:
        return {}
    try:
        found = natsjwt.decode(token, verify=False).get("nats", {}).get("revocations") or {}
        return {str(k): int(v) for k, v in found.items()}
    except (natsjwt.JwtError, ValueError, TypeError, AttributeError):
        return {}


def _iat(token: str) -> int:
    if not token:
        return -1
    try:
        return int(natsjwt.decode(token, verify=False).get("iat", 0))
    except (natsjwt.JwtError, ValueError, TypeError):
        return 0
