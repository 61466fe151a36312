"""Credentials a supervised NATS link can renew (see supervised.py).

A link connects with `current()` and, when its JWT is about to expire or the server said it
has (expired, revoked, authorization violation), awaits `renew(stale)`: that returns once
`current()` holds a JWT issued after `stale`, never the same one again (retrying with a dead
JWT is how an agent used to spend five minutes answering nothing).

`MemoryCredentials` is for identities whose JWT someone else writes (the bridge's own tenant
users, which the bridge renews on its schedule; the router's, which arrive on its
`nats_users` rows): renewal waits for that write, and asks `refresh` to look again when it
is late.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from cairn_common import natsjwt

log = logging.getLogger(__name__)


class RenewError(Exception):
    """No newer JWT could be had (yet): the link retries with backoff."""


class Renewable(Protocol):
    def current(self) -> tuple[str, str]:
        """(user JWT, user seed) to connect with now."""

    async def renew(self, stale: str) -> None:
        """Return once current() holds a JWT newer than `stale`; RenewError if not."""


def lifetime(token: str) -> tuple[int, int | None]:
    """(iat, exp) of a JWT, unverified ((0, None) when it cannot be read)."""
    try:
        claims = natsjwt.decode(token, verify=False)
    except natsjwt.JwtError:
        return 0, None
    exp = claims.get("exp")
    return int(claims.get("iat") or 0), int(exp) if exp else None


def is_newer(token: str, stale: str) -> bool:
    """A different JWT issued no earlier than `stale` (iat has one-second resolution)."""
    if not token or token == stale:
        return False
    return lifetime(token)[0] >= lifetime(stale)[0]


Refresh = Callable[[], Awaitable[None]]


class MemoryCredentials:
    """Creds held in memory and replaced by `set()`; `renew` waits for a newer one."""

    def __init__(self, jwt: str = "", seed: str = "", refresh: Refresh | None = None,
                 patience: float = 10.0, give_up: float = 60.0) -> None:
        self._jwt = jwt
        self._seed = seed
        self.refresh = refresh  # e.g. re-read the row, or ask for a re-issue
        self.patience = patience  # seconds to wait for a write before calling refresh
        self.give_up = give_up  # seconds after which renew raises RenewError
        self._changed = asyncio.Event()

    def current(self) -> tuple[str, str]:
        if not self._jwt:
            raise RenewError("no credentials yet")
        return self._jwt, self._seed

    @property
    def jwt(self) -> str:
        return self._jwt

    def set(self, jwt: str, seed: str) -> bool:
        """Take a JWT if it is newer than the one held; True when it was taken."""
        if not jwt or not seed or (self._jwt and not is_newer(jwt, self._jwt)):
            return False
        self._jwt, self._seed = jwt, seed
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    async def renew(self, stale: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.give_up
        asked = False
        while not is_newer(self._jwt, stale):
            left = deadline - loop.time()
            if left <= 0:
                raise RenewError(f"no JWT newer than the stale one within {self.give_up:.0f} s")
            waiter = self._changed
            try:
                await asyncio.wait_for(waiter.wait(), min(left, self.patience))
            except TimeoutError:
                if self.refresh is not None:
                    asked = True
                    try:
                        await self.refresh()
                    except Exception as exc:  # the next round asks again
                        log.warning("credential refresh failed", extra={"error": str(exc)})
        if asked:
            log.info("renewed credentials arrived after a refresh")


class FixedCredentials:
    """Creds from a function that someone else keeps current (tests, files rewritten by
    another process): renewal only looks again, and says so when nothing newer is there."""

    def __init__(self, provider: Callable[[], tuple[str, str]]) -> None:
        self.provider = provider

    def current(self) -> tuple[str, str]:
        return self.provider()

    async def renew(self, stale: str) -> None:
        if not is_newer(self.provider()[0], stale):
            raise RenewError("no newer JWT available")


def as_renewable(creds: Renewable | Callable[[], tuple[str, str]]) -> Renewable:
    """A Renewable as is; a plain (jwt, seed) function wrapped in FixedCredentials."""
    if hasattr(creds, "renew") and hasattr(creds, "current"):
        return creds  # type: ignore[return-value]
    return FixedCredentials(creds)  # type: ignore[arg-type]
