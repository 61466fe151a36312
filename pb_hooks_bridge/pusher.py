"""Push account JWTs to nats-server over the system account, one account at a time.

Per account, pushes are serialized under the account's lock and coalesced: whoever holds
the lock signs the *current* state, so a stale JWT can never follow a newer one (the full
resolver would accept it and silently undo a revocation, SPEC §10).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import nats
import nkeys
from nats.aio.client import Client as NATS

from cairn_common import natsjwt
from cairn_common.pocketbase import PocketBase, PocketBaseError
from pb_hooks_bridge import metrics
from pb_hooks_bridge.accounts import MAX_IAT_LEAD, Account
from pb_hooks_bridge.errors import BridgeError

log = logging.getLogger(__name__)

CLAIMS_UPDATE = "$SYS.REQ.CLAIMS.UPDATE"
CLAIMS_DELETE = "$SYS.REQ.CLAIMS.DELETE"


class PushError(BridgeError):
    """The server refused an account JWT or did not answer."""


class Pusher:
    def __init__(self, nc: NATS, pb: PocketBase, operator: nkeys.KeyPair, system_account: str,
                 window: float = 0.01, timeout: float = 5.0) -> None:
        self.nc = nc
        self.system_account = system_account
        self.pb = pb
        self.operator = operator
        self.window = window
        self.timeout = timeout

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
            if not account.server_checked:
                await self._catch_up_iat(account)
            if self.window:
                await asyncio.sleep(self.window)  # let concurrent changes pile in
            lead = account.last_iat + 1 - int(time.time())
            if lead > MAX_IAT_LEAD:
                await asyncio.sleep(lead - MAX_IAT_LEAD)
            target = account.wanted
            signed = not account.same_content(account.jwt)
            if signed:
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
            await self.send_update(account.jwt)
            account.pushed = target
            return signed

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

    async def send_update(self, token: str) -> None:
        started = time.perf_counter()
        try:
            reply = await self.nc.request(CLAIMS_UPDATE, token.encode(), timeout=self.timeout)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError,
                nats.errors.ConnectionClosedError) as exc:
            metrics.PUSH_FAILURES.inc()
            raise PushError(f"account push got no answer: {exc.__class__.__name__}") from exc
        self._check(reply.data, "update")
        metrics.PUSHES.inc()
        metrics.PUSH_SECONDS.observe(time.perf_counter() - started)

    async def delete(self, account_public_keys: list[str]) -> None:
        """Remove accounts from the resolver (operator-signed request)."""
        claims: dict[str, Any] = {
            "sub": self.operator.public_key.decode(),
            "nats": {"accounts": account_public_keys, "type": "generic", "version": 2},
        }
        token = natsjwt.encode(claims, self.operator)
        try:
            reply = await self.nc.request(CLAIMS_DELETE, token.encode(), timeout=self.timeout)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            metrics.PUSH_FAILURES.inc()
            raise PushError(f"account delete got no answer: {exc.__class__.__name__}") from exc
        self._check(reply.data, "delete")

    async def lookup(self, account_public_key: str) -> str:
        """The account JWT the server holds now ('' when none). PushError when the server
        cannot be asked (no responders, connection closed, no answer in time)."""
        subject = f"$SYS.REQ.ACCOUNT.{account_public_key}.CLAIMS.LOOKUP"
        reply = await self._request(subject)
        return reply.data.decode()

    async def list_accounts(self) -> list[str]:
        """Every account the server's resolver holds (PushError when it cannot be asked)."""
        subject = "$SYS.REQ.CLAIMS.LIST"
        reply = await self._request(subject)
        try:
            body = json.loads(reply.data)
        except ValueError as exc:
            raise PushError(f"{subject}: unreadable reply {reply.data[:200]!r}") from exc
        if not isinstance(body, dict):
            raise PushError(f"{subject}: unexpected reply {reply.data[:200]!r}")
        if "error" in body:
            raise PushError(f"{subject}: refused by nats-server: {body['error']}")
        return list(body.get("data") or [])

    async def _request(self, subject: str) -> Any:
        """A request on the system account; raw nats errors become PushError."""
        try:
            return await self.nc.request(subject, b"", timeout=self.timeout)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError,
                nats.errors.ConnectionClosedError, TimeoutError) as exc:
            raise PushError(f"{subject}: no answer ({exc.__class__.__name__})") from exc
        except nats.errors.Error as exc:
            raise PushError(f"{subject}: {exc.__class__.__name__}: {exc}") from exc

    @staticmethod
    def _check(data: bytes, what: str) -> None:
        try:
            body = json.loads(data)
        except ValueError as exc:
            metrics.PUSH_FAILURES.inc()
            raise PushError(f"account {what}: unreadable reply {data[:200]!r}") from exc
        if "error" in body:
            metrics.PUSH_FAILURES.inc()
            raise PushError(f"account {what} refused by nats-server: {body['error']}")
