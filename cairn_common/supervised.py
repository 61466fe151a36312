"""One NATS connection that lives for months: renewed ahead of its JWT's expiry, reopened
under supervision when it closes for any reason, never doubled.

nats-py reconnects by itself after network trouble, but an `-ERR` from the server (user
authentication expired, credentials revoked, authorization violation) closes the client for
good, and a JWT that expired while it was reconnecting is offered again every second. So:

- One supervisor task owns the connection. Everything that changes it (a reopen after a
  close, a scheduled renewal, a requested swap such as a key rotation) happens in that one
  task, one step at a time: two connections can never be opened for one reason and kept,
  and a close of a connection that was already replaced is ignored (it is bound to the
  connection it came from).
- Renewal is scheduled from the JWT's own `iat`/`exp` (at `renew_at` of its lifetime, with
  a little jitter), never on a fixed period. An "expired"/"revoked"/"authorization" close or
  connect error triggers renewal at once, and the link never reconnects with the JWT it was
  refused with (`Renewable.renew` returns only a newer one).
- A swap opens the new connection and runs `on_connect` on it (subscribe, start consumers)
  before the old one retires. The old one keeps its in-flight work (`hold`) until done, or
  until shortly before its JWT expires, then drains. Subscribers that must not see a
  message twice while two connections overlap use a queue group.
- Every reopen, renewal and failure is counted in /metrics (`cairn_nats_link_*`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import nats
import nkeys
from nats.aio.client import Client as NATS

from cairn_common.link_settings import (
    AUTH_REASONS,
    CONNECTED,
    EXPIRY_MARGIN,
    FAILURES,
    REASONS,
    RENEWALS,
    REOPENED,
    LinkSettings,
    OnConnect,
    auth_reason,
    connection_status,
)
from cairn_common.renewable import Renewable, RenewError, lifetime
from cairn_common.retiring import Holds, close, drain, drain_subscriptions
from cairn_common.tasks import cancel_and_wait

log = logging.getLogger(__name__)

class SupervisedLink:
    def __init__(self, settings: LinkSettings, credentials: Renewable, on_connect: OnConnect,
                 on_retire: OnConnect | None = None,
                 on_reconnect: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.on_reconnect = on_reconnect  # a reconnect or an unplanned reopen (health counts)
        self.credentials = credentials
        self.on_connect = on_connect
        self.on_retire = on_retire  # called with the old connection before it drains
        self._nc: NATS | None = None
        self._used: dict[NATS, str] = {}  # connection -> the JWT it last authenticated with
        self._holds = Holds()
        self._wake = asyncio.Event()
        self._up = asyncio.Event()
        self._stopping = False
        self._trouble: str | None = None  # an auth refusal seen while reconnecting
        self._swaps: list[tuple[str, asyncio.Future[None]]] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._renew_due: float | None = None  # wall clock
        self._closed = "first"  # why the next open happens (metrics label)
        self._stale = ""  # the JWT of the connection that closed, until a new one is up
        self.opened = 0  # connections opened, for tests and health

    # -- what users see -------------------------------------------------------------

    @property
    def nc(self) -> NATS | None:
        return self._nc

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def status(self) -> dict[str, Any]:
        return connection_status(self._nc)

    def take(self, nc: NATS | None = None) -> Callable[[], None]:
        """Mark `nc` (default: the current connection) busy now; call the returned function
        once when done. For work started from a message callback: taken before the
        callback returns, so a retiring connection always sees it."""
        nc = nc or self._nc
        if nc is None:
            raise nats.errors.ConnectionClosedError()
        return self._holds.take(nc)

    @contextlib.contextmanager
    def hold(self, nc: NATS | None = None) -> Iterator[NATS]:
        """Keep `nc` (default: the current connection) from retiring while work that must
        finish on it (a reply to a request it received, a request it sent) is running."""
        nc = nc or self._nc
        release = self.take(nc)
        try:
            yield nc  # type: ignore[misc]
        finally:
            release()

    async def start(self) -> None:
        """Start supervising and return once the first connection is up (retries forever;
        wrap in wait_for to bound it, then call stop)."""
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._run(),
                                                   name=f"nats-link:{self.settings.name}")
        await self._up.wait()

    async def replace(self, reason: str) -> None:
        """Open a new connection with the current credentials (e.g. after a key rotation)
        and retire the old one; returns once the new one is up."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._swaps.append((reason, future))
        self._wake.set()
        await future

    async def stop(self, grace: float = 5.0) -> None:
        self._stopping = True
        self._wake.set()
        await cancel_and_wait([self._supervisor])
        for _, future in self._swaps:
            if not future.done():
                future.cancel()
        await cancel_and_wait(list(self._retiring))
        nc, self._nc = self._nc, None
        CONNECTED.labels(self.settings.label).set(0)
        for conn in [c for c in [nc, *self._used] if c is not None and not c.is_closed]:
            await drain(conn, grace)
        self._used.clear()

    # -- the supervisor -------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self.settings.backoff_first
        while not self._stopping:
            try:
                await self._step()
                backoff = self.settings.backoff_first
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                FAILURES.labels(self.settings.label).inc()
                log.warning("NATS link step failed; retrying",
                            extra={"link": self.settings.name, "retry_in": round(backoff, 1),
                                   "error": str(exc) or exc.__class__.__name__})
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.settings.backoff_max)

    async def _step(self) -> None:
        nc = self._nc
        if nc is None or nc.is_closed:
            if nc is not None:
                self._closed = auth_reason(nc.last_error) or "closed"
                self._stale = self._used.pop(nc, "") or self._stale
                self._nc = None
                CONNECTED.labels(self.settings.label).set(0)
                log.warning("NATS connection closed; opening a new one",
                            extra={"link": self.settings.name, "reason": self._closed,
                                   "error": str(nc.last_error or "") or None})
            reason = self._trouble or self._closed
            if reason in AUTH_REASONS or self._expired(self._stale):
                await self._renew_or_keep(self._stale, reason)
                self._trouble = None
            await self._open_current(self._closed)
            self._closed, self._stale = "closed", ""
            return
        await self._wait(self._until_renewal())
        if self._stopping or nc is not self._nc or nc.is_closed:
            return
        if self._trouble and not nc.is_connected:
            # refused while reconnecting: renew now; nats-py's next attempt uses it
            trouble, self._trouble = self._trouble, None
            await self._renew(self._used_jwt(nc), trouble)
            return
        self._trouble = None
        if self._renew_due is not None and time.time() >= self._renew_due:
            try:
                await self._renew(self._used_jwt(nc), "ahead of expiry")
            except RenewError:
                self._postpone_renewal()  # still connected: try again later, not in a loop
                raise
            await self._open_current("renewal")
        elif self._swaps:
            await self._open_current(self._swaps[0][0])

    async def _open_current(self, reason: str) -> None:
        """Open with the current credentials, set it up, switch to it, retire the old."""
        new = await self._open()
        try:
            await self.on_connect(new)
        except BaseException:
            await close(new)
            raise
        old, self._nc = self._nc, new
        self.opened += 1
        self._up.set()
        CONNECTED.labels(self.settings.label).set(1)
        REOPENED.labels(self.settings.label, reason if reason in REASONS else "requested").inc()
        self._schedule_renewal()
        swaps, self._swaps = self._swaps, []
        for _, future in swaps:
            if not future.done():
                future.set_result(None)
        if reason != "first":
            log.info("NATS link open", extra={"link": self.settings.name, "reason": reason})
        if old is None and reason != "first" and self.on_reconnect is not None:
            self.on_reconnect()  # reopened after a close (a planned swap is not trouble)
        if old is not None:
            task = asyncio.create_task(self._retire(old), name=f"nats-retire:{self.settings.name}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _renew(self, stale: str, reason: str) -> None:
        try:
            await self.credentials.renew(stale)
        except Exception as exc:
            RENEWALS.labels(self.settings.label, "failed").inc()
            if isinstance(exc, RenewError):
                raise
            raise RenewError(f"{exc.__class__.__name__}: {exc}") from exc
        RENEWALS.labels(self.settings.label, "ok").inc()
        log.info("NATS credentials renewed", extra={"link": self.settings.name,
                                                    "reason": reason})

    async def _renew_or_keep(self, stale: str, reason: str) -> None:
        """Renew after a refusal; when no newer JWT comes but the one we hold has not
        expired (a refusal that was not about it, a bridge that will not re-sign yet),
        go on with it: the open is retried with backoff, never left undone."""
        try:
            await self._renew(stale, reason)
        except RenewError as exc:
            try:
                held = self.credentials.current()[0]
            except RenewError:
                raise exc from None
            if self._expired(held):
                raise
            log.warning("no newer NATS JWT; reconnecting with the one held",
                        extra={"link": self.settings.name, "reason": reason,
                               "error": str(exc)})

    def _postpone_renewal(self) -> None:
        """A renewal ahead of expiry was refused: next try a tenth of the remaining time
        later (at least 30 s), and always before the JWT expires."""
        _, exp = lifetime(self._used_jwt(self._nc))
        now = time.time()
        if not exp:
            self._renew_due = None
            return
        later = now + max(30.0, (exp - now) * 0.1)
        self._renew_due = max(now + 1.0, min(later, exp - 3 * EXPIRY_MARGIN))

    async def _retire(self, old: NATS) -> None:
        """Stop the old connection taking new work (its subscriptions drain: callbacks for
        what it already received run, and take their holds), let it finish what it holds,
        then drain it. Its request inbox stays: replies to requests it sent still come."""
        try:
            if self.on_retire is not None:
                await self.on_retire(old)
            await drain_subscriptions(old)
            _, exp = lifetime(self._used_jwt(old))
            limit = time.time() + self.settings.retire_max
            deadline = min(limit, exp - EXPIRY_MARGIN) if exp else limit
            while self._holds.busy(old) and time.time() < deadline and not old.is_closed:
                await asyncio.sleep(0.2)
            await drain(old, 5.0)
        except Exception as exc:
            log.warning("retiring an old NATS connection failed",
                        extra={"link": self.settings.name, "error": str(exc)})
            await close(old)
        finally:
            self._used.pop(old, None)

    # -- helpers --------------------------------------------------------------------

    def _schedule_renewal(self) -> None:
        iat, exp = lifetime(self._used_jwt(self._nc))
        if not exp:
            self._renew_due = None
            return
        span = max(1, exp - iat)
        share = self.settings.renew_at + random.uniform(-1, 1) * self.settings.jitter
        self._renew_due = max(iat + span * share, time.time() + 1.0)

    def _until_renewal(self) -> float | None:
        if self._renew_due is None:
            return None
        return max(0.0, self._renew_due - time.time())

    def _used_jwt(self, nc: NATS | None) -> str:
        return self._used.get(nc, "") if nc is not None else ""

    @staticmethod
    def _expired(token: str) -> bool:
        _, exp = lifetime(token)
        return bool(exp) and exp - EXPIRY_MARGIN <= time.time()

    async def _wait(self, timeout: float | None) -> None:
        if self._wake.is_set():
            self._wake.clear()
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass
        self._wake.clear()

    async def _sleep(self, seconds: float) -> None:
        """Backoff that only a stop cuts short. Wake-ups (a close, a refusal seen while
        reconnecting, a swap request) are cleared here: the next step reads the state
        afresh, and a wake left set (or a swap that keeps failing) would turn every backoff
        into a busy loop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self._stopping:
            self._wake.clear()
            left = deadline - loop.time()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)

    async def _open(self) -> NATS:
        s = self.settings
        nc = NATS()
        connecting = True

        def user_jwt_cb() -> bytes:
            jwt = self.credentials.current()[0]
            self._used[nc] = jwt
            return jwt.encode()

        def signature_cb(nonce: str) -> bytes:
            kp = nkeys.from_seed(bytearray(self.credentials.current()[1].encode()))
            try:
                return base64.b64encode(kp.sign(nonce.encode()))
            finally:
                kp.wipe()

        async def on_error(exc: Exception) -> None:
            reason = auth_reason(exc)
            if reason is not None and (connecting or nc is self._nc):
                self._trouble = reason
                self._wake.set()
            log.warning("NATS error", extra={"link": s.name,
                                             "error": str(exc) or exc.__class__.__name__})

        async def on_disconnect() -> None:
            if nc is self._nc and not self._stopping:
                log.warning("NATS disconnected", extra={"link": s.name})

        async def on_reconnect() -> None:
            log.info("NATS reconnected", extra={"link": s.name})
            if self.on_reconnect is not None and nc is self._nc:
                self.on_reconnect()

        async def on_closed() -> None:
            if nc is self._nc:
                self._wake.set()

        # Spread links over a cluster's nodes here, and keep that order: nats-py shuffles
        # the whole pool again on every reconnect, so a third of the time it first retried
        # the node just lost (after reconnect_time_wait; a hung one costs connect_timeout).
        servers = random.sample(s.servers, len(s.servers))
        options: dict[str, Any] = {
            "servers": servers, "dont_randomize": True, "name": s.name,
            "user_jwt_cb": user_jwt_cb,
            "signature_cb": signature_cb, "allow_reconnect": True,
            # the first connect gives up after two tries per server, so the supervisor can
            # renew refused credentials and back off; once up, reconnect forever
            "max_reconnect_attempts": 1, "reconnect_time_wait": s.reconnect_time_wait,
            "ping_interval": s.ping_interval, "max_outstanding_pings": s.max_outstanding_pings,
            "connect_timeout": s.connect_timeout, "error_cb": on_error,
            "disconnected_cb": on_disconnect, "reconnected_cb": on_reconnect,
            "closed_cb": on_closed,
        }
        if s.inbox_prefix:
            options["inbox_prefix"] = s.inbox_prefix
        if s.tls is not None:
            options["tls"] = s.tls
        try:
            await nc.connect(**options)
        except BaseException as exc:
            refused = self._used.pop(nc, "")
            reason = auth_reason(exc) if isinstance(exc, Exception) else None
            if reason is not None or self._trouble:
                # the next step renews before connecting again, past this JWT
                self._trouble = self._trouble or reason
                self._stale = refused or self._stale
            await close(nc)
            raise
        finally:
            connecting = False
        nc.options["max_reconnect_attempts"] = -1
        if self._trouble and nc.is_connected:
            self._trouble = None  # refused on one server, accepted on another
        return nc
