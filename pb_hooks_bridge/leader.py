"""One bridge leads; any other bridge stands by and takes over when the leader dies.

The lease is one key in a KV bucket of Cairn's own account (control_account.py: made by
bootstrap, checked against the servers before a bridge stands, so that every bridge
leases in the same bucket) whose entries expire after TTL seconds. The leader rewrites it
every RENEW seconds with a compare-and-set on the revision it last wrote, so a second
writer can never slip in unnoticed. A standby tries to create the key every RETRY
seconds, which succeeds only once the leader's last entry has expired: a dead leader is
replaced within about TTL + RETRY seconds.

Fencing. A leader that was paused (SIGSTOP, a long GC, a hung VM) may wake up after its
lease expired and another bridge took over. Before every account push it calls `check`,
which compares the monotonic clock (it keeps counting through a pause) with the
deadline of its last successful renewal, minus a safety margin, and raises LeaseLost
once that has passed: a paused leader cannot push after losing the lease. Anything it
pushed before that carries an `iat` below the new leader's (the new leader signs from
after its takeover), and the servers refuse a JWT older than the one they hold. Its
PocketBase writes are guarded as always: a grant never lands on a disabled device
(`X-Cairn-Unless-Status`) and a command's unique `command.sent` claim is never made twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable

import nats.errors
import nkeys
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import (
    APIError,
    BadRequestError,
    KeyWrongLastSequenceError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue

from cairn_common.layout import DataLayout
from cairn_common.renewable import FixedCredentials
from cairn_common.supervised import LinkSettings, SupervisedLink
from pb_hooks_bridge import control_account, metrics
from pb_hooks_bridge.errors import BridgeError

log = logging.getLogger(__name__)

BUCKET = "cairn_bridge_leader"
RECONCILE = "cairn.bridge.reconcile"  # ask the leader for a full pass (control account)
KEY = "leader"
# seconds an entry lives: a dead leader is replaced after about this long. Longer than a
# cluster's JetStream leader election for the bucket (4-6 s, a node killed), during which
# renewals cannot land; short enough for a takeover within 10 s.
TTL = 8.0
RENEW = 1.0  # seconds between the leader's renewals
RETRY = 1.0  # seconds between a standby's attempts
MARGIN = 1.5  # seconds before the lease's end after which the leader stops pushing
NAME_IN_USE = 10058  # JetStream: stream name already in use with a different configuration
NO_PEERS = 10005  # JetStream: no suitable peers for placement (nodes not up yet)
NOT_CLUSTERED = 10074  # JetStream: replicas > 1 not supported in non-clustered mode
CLUSTER_NOT_READY = 10008  # JetStream: "JetStream system temporarily unavailable"
# JetStream: "JetStream not enabled for account". Also what a node answers for a moment
# after start, before the account's JWT (with its JetStream limits) is applied on it (seen
# in CI on a loaded box, every cluster test's bridge at once): waited out for a while,
# then a clear error (it may really be off).
ACCOUNT_JS_OFF = 10039
ACCOUNT_JS_WAIT = 20.0  # seconds
OPEN_WAIT = 120.0  # seconds the lease bucket may wait for a cluster still forming


def _refused(exc: APIError) -> BridgeError:
    """JetStream refused the lease bucket for a reason waiting does not mend."""
    hint = (" Set CAIRN_NATS_REPLICAS=1 for a single server."
            if exc.err_code == NOT_CLUSTERED else "")
    return BridgeError(f"cannot make the leader lease bucket: {exc.description} "
                       f"(JetStream error {exc.err_code}).{hint}")


class LeaseLost(Exception):
    """This bridge no longer holds the lease (or cannot prove it does)."""


def instance_name() -> str:
    """Unique per process, also across containers that share a hostname and a pid."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Lease:
    def __init__(self, holder: str | None = None, ttl: float = TTL, renew: float = RENEW,
                 retry: float = RETRY, margin: float = MARGIN, bucket: str = BUCKET) -> None:
        self.holder = holder or instance_name()
        self.bucket = bucket
        self.ttl, self.renew_every, self.retry, self.margin = ttl, renew, retry, margin
        self.kv: KeyValue | None = None
        self.revision = 0
        self.deadline = 0.0  # monotonic: the lease is ours until then (minus margin)
        self.taken_at = 0.0  # wall clock of the takeover
        self.leading = False

    async def open(self, nc: NATS, replicas: int = 1,
                   stopping: asyncio.Event | None = None) -> bool:
        """Make or open the bucket; False when `stopping` was set first. A cluster whose
        nodes are not all up yet cannot place the replicas: that is waited out (every
        RETRY seconds, at most OPEN_WAIT), never taken for a bucket made before. What
        waiting cannot mend (more replicas than nodes, JetStream off) raises BridgeError."""
        js = nc.jetstream(timeout=5)
        # file storage: the lease outlives a nats-server restart shorter than the TTL (a
        # memory bucket would vanish and the leader would take that for a takeover)
        config = KeyValueConfig(bucket=self.bucket, ttl=self.ttl, history=1,
                                storage=StorageType.FILE, replicas=replicas)
        told, since = "", time.monotonic()
        while stopping is None or not stopping.is_set():
            try:
                self.kv = await js.create_key_value(config)
                return True
            except BadRequestError as exc:
                if exc.err_code == NAME_IN_USE:  # made before with other settings
                    await self._open_existing(js, replicas)
                    return True
                if exc.err_code != NO_PEERS:
                    raise _refused(exc) from exc
                reason = str(exc.description)
            except ServiceUnavailableError as exc:
                if exc.err_code == ACCOUNT_JS_OFF and \
                        time.monotonic() - since >= ACCOUNT_JS_WAIT:
                    raise _refused(exc) from exc
                if exc.err_code not in (None, CLUSTER_NOT_READY, ACCOUNT_JS_OFF):
                    raise _refused(exc) from exc
                # nats-py's answer to "no responders": no JetStream answered (yet)
                reason = exc.description or "no JetStream answered (is it enabled?)"
            except APIError as exc:  # e.g. a 500: replicas > 1 on a lone server
                raise _refused(exc) from exc
            except (nats.errors.TimeoutError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
            waited = time.monotonic() - since
            if waited >= OPEN_WAIT:
                raise BridgeError(
                    f"the leader lease bucket ({replicas} replicas) could not be placed in "
                    f"{OPEN_WAIT:.0f} s: {reason}. Are all {replicas} nodes up, and is "
                    "CAIRN_NATS_REPLICAS at most the number of nodes?")
            if reason != told:
                told = reason
                log.warning("lease bucket not placeable yet; waiting for the cluster",
                            extra={"replicas": replicas, "error": reason,
                                   "gives_up_in": round(OPEN_WAIT - waited)})
            if stopping is None:
                await asyncio.sleep(self.retry)
                continue
            try:
                await asyncio.wait_for(stopping.wait(), self.retry)
            except TimeoutError:
                pass
        return False

    async def _open_existing(self, js: JetStreamContext, replicas: int) -> None:
        self.kv = await js.key_value(self.bucket)
        info = await js.stream_info(f"KV_{self.bucket}")
        if (info.config.num_replicas or 1) < replicas:
            log.warning("the lease bucket has fewer replicas than planned: losing its node "
                        "loses the lease", extra={"replicas": info.config.num_replicas,
                                                  "planned": replicas})
        max_age = info.config.max_age
        if max_age and max_age < self.ttl:  # entries die sooner: our deadline too
            log.warning("the lease bucket keeps entries shorter than planned",
                        extra={"ttl": max_age, "planned": self.ttl})
            self.ttl = float(max_age)

    def _value(self) -> bytes:
        return json.dumps({"holder": self.holder, "since": self.taken_at}).encode()

    async def acquire(self, stopping: asyncio.Event, wait: bool = True) -> bool:
        """Wait until this bridge holds the lease (True), or `stopping` is set (False);
        with `wait=False`, try once."""
        told = ""
        while not stopping.is_set():
            assert self.kv is not None
            sent = time.monotonic()
            self.taken_at = time.time()
            try:
                self.revision = await self.kv.create(KEY, self._value())
                self.deadline = sent + self.ttl
                self.leading = True
                metrics.LEADER.set(1)
                log.info("this bridge leads", extra={"holder": self.holder,
                                                     "revision": self.revision})
                return True
            except KeyWrongLastSequenceError:
                holder = await self._holder()
                if holder != told:
                    told = holder
                    log.info("standing by: another bridge leads", extra={"leader": holder})
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("lease not reachable; trying again", extra={"error": str(exc)})
            if not wait:
                return False
            try:
                await asyncio.wait_for(stopping.wait(), self.retry)
            except TimeoutError:
                pass
        return False

    async def keep(self) -> None:
        """Renew until the lease is lost; then raise LeaseLost (never returns otherwise)."""
        while True:
            await asyncio.sleep(self.renew_every)
            assert self.kv is not None
            sent = time.monotonic()
            try:
                self.revision = await asyncio.wait_for(
                    self.kv.update(KEY, self._value(), last=self.revision), self.renew_every)
                self.deadline = sent + self.ttl
            except KeyWrongLastSequenceError:
                if not await self._still_mine():
                    self._lost("another bridge took the lease")
            except (nats.errors.Error, TimeoutError) as exc:
                if time.monotonic() >= self.deadline - self.margin:
                    self._lost(f"could not renew the lease in time ({exc.__class__.__name__})")
                log.warning("lease renewal failed; retrying", extra={"error": str(exc)})
            self.check()

    def check(self) -> None:
        """Raise LeaseLost unless the lease is surely still ours (call before a push)."""
        if not self.leading:
            raise LeaseLost("this bridge does not lead")
        if time.monotonic() >= self.deadline - self.margin:
            self._lost("the lease ran out (was this process paused?)")

    async def release(self) -> None:
        """Let a standby take over at once (a clean stop)."""
        if self.leading and self.kv is not None:
            self.leading = False
            metrics.LEADER.set(0)
            try:
                await self.kv.delete(KEY, last=self.revision)
            except (nats.errors.Error, TimeoutError, KeyWrongLastSequenceError,
                    NotFoundError) as exc:
                log.info("lease not released (it expires by itself)", extra={
                    "error": str(exc)})

    async def _still_mine(self) -> bool:
        """After a refused renewal: is the stored entry our own (a renewal that landed but
        whose answer was lost)? Then carry on from its revision."""
        assert self.kv is not None
        try:
            entry = await self.kv.get(KEY)
            doc = json.loads(entry.value or b"{}")
        except (nats.errors.Error, ValueError, TimeoutError, NotFoundError):
            return False
        if doc.get("holder") == self.holder and doc.get("since") == self.taken_at:
            self.revision = int(entry.revision or 0)
            return True
        return False

    async def _holder(self) -> str:
        assert self.kv is not None
        try:
            entry = await self.kv.get(KEY)
            return str(json.loads(entry.value or b"{}").get("holder") or "?")
        except (nats.errors.Error, ValueError, TimeoutError):
            return "?"

    def _lost(self, why: str) -> None:
        if self.leading:
            self.leading = False
            metrics.LEADER.set(0)
            metrics.LEASES_LOST.inc()
            log.error("this bridge lost the leader lease: it stops leading",
                      extra={"reason": why})
        raise LeaseLost(why)


class Leadership:
    """The control-account link and the lease on it, for one bridge process."""

    def __init__(self, servers: tuple[str, ...], replicas: int, lease: Lease | None = None
                 ) -> None:
        self.servers, self.replicas = servers, replicas
        self.lease = lease or Lease()
        self.link: SupervisedLink | None = None
        self.control: control_account.ControlAccount | None = None
        self.keeper: asyncio.Task[None] | None = None
        self.on_lost: Callable[[], None] = lambda: None  # the bridge stops what it does

    async def stand(self, sys_nc: NATS, operator: nkeys.KeyPair, layout: DataLayout,
                    stopping: asyncio.Event, wait: bool = True) -> bool:
        """Check the control account against the servers, make it known, connect to it,
        and wait for the lease (True: this bridge leads; False: it was stopped while
        standing by, or the lease is held and `wait` is False). ControlAccountError when
        bootstrap made none here, ForeignControlAccount when the servers name another:
        leasing in a bucket of its own would make this bridge a second leader."""
        control = self.control = control_account.load(layout, operator)
        await control_account.verify(sys_nc, control, operator.public_key.decode())
        await control_account.push(sys_nc, control)
        opened = asyncio.Event()

        async def on_connect(nc: NATS) -> None:
            opened.set()

        held = (control.user_jwt, control.user_seed)
        self.link = SupervisedLink(
            LinkSettings(name="cairn-bridge/control", label="bridge-control",
                         servers=self.servers, ping_interval=2, max_outstanding_pings=2,
                         reconnect_time_wait=0.2, backoff_max=2.0),
            FixedCredentials(lambda: held), on_connect)
        await asyncio.wait_for(self.link.start(), 30)
        assert self.link.nc is not None
        if not await self.lease.open(self.link.nc, self.replicas, stopping):
            return False
        if not await self.lease.acquire(stopping, wait):
            return False
        # renewed from now on, not only once the bridge runs (its start-up can take longer
        # than the lease lives, and so can a `cairn-bridge reconcile` pass)
        self.keeper = asyncio.create_task(self._keep(), name="leader-lease")
        return True

    async def _keep(self) -> None:
        try:
            await self.lease.keep()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # LeaseLost, or anything unexpected: stop leading
            if not isinstance(exc, LeaseLost):
                log.exception("lease keeper failed; this bridge stops leading")
                self.lease.leading = False
            self.on_lost()

    async def serve(self, subject: str, answer: Callable[[], Awaitable[str]]) -> None:
        """Answer `subject` on the control account (the leader does, e.g. for
        `cairn-bridge reconcile` run next to it)."""
        assert self.link is not None and self.link.nc is not None

        async def on_request(msg: Msg) -> None:
            try:
                text = await answer()
            except Exception as exc:  # the asker gets the reason
                text = f"error: {exc}"
            await msg.respond(text.encode())

        await self.link.nc.subscribe(subject, cb=on_request)

    async def ask(self, subject: str, timeout: float) -> str:
        """Ask the leading bridge (LookupError when none answers)."""
        assert self.link is not None and self.link.nc is not None
        try:
            msg = await self.link.nc.request(subject, b"", timeout=timeout)
        except nats.errors.NoRespondersError:
            raise LookupError("no bridge leads right now") from None
        return msg.data.decode()

    async def close(self, release: bool = True) -> None:
        """Stop renewing; release the lease (a standby takes over at once) unless it was
        lost already; close the link."""
        if self.keeper is not None:
            self.keeper.cancel()
            await asyncio.gather(self.keeper, return_exceptions=True)
        if release:
            await self.lease.release()
        if self.link is not None:
            await self.link.stop(grace=0.5 if release else 0.1)
