"""Throttle windows shared by every router of one identity, in a KV bucket of the tenant.

Why: routers of one identity share each tenant's durable consumer, so the messages of one
subject are spread over them; a window kept per process (`throttle.py`) let a rule
throttled "5m" fire once per router per window. Here a window lives in the tenant's
`CAIRN_THROTTLE` bucket (made by the bridge, `pb_hooks_bridge/streams.py`), so across any
number of routers a rule fires at most once per window per concrete subject.

- **Key**: `<identity>.<sha256 of (rule id, subject)>`. Rule ids (`<source>#<n>`) and
  subjects (`*`, `>`) hold characters KV keys refuse. The identity prefix keeps routers of
  different identities apart (each has a durable consumer of its own, so each sees every
  message and keeps its own windows), and it is all the router's NATS user may touch
  (`$KV.CAIRN_THROTTLE.<identity>.>`, pb_migrations/1764000005_router_throttle.js).
- **Value**: `{"until": <wall-clock end>, "seq": <stream sequence of the message that
  opened it>}`. `until` comes from the clock of the router that opened the window: routers
  on different machines should be NTP-synced (a skew of s shifts a window's end by s).
- **Check** (`acquire`, compare-and-set): read the key (direct get); an open window holds
  the firing, unless this very message opened it: a redelivery, maybe to the other router,
  still fires (what `ledger.Replay` does inside one process; a resumed redelivery never
  gets here). Absent or over: write it with the revision read (0 = must not exist); a
  wrong-last-sequence answer means another router wrote it first: read again.
- **Bounded**: every entry carries a per-message TTL (`Nats-TTL`, nats-server 2.11+) of
  its window plus TTL_SLACK, so it goes once its window is over, with no sweeper. The
  bucket also has MAX_WINDOW as max_age (a window longer than that is held across routers
  only that long) and a size bound (the oldest entries go first when it is full).
- **Local knowledge**: every window this router opened or read is remembered. `Gate` is
  the sync throttle `evaluate` sees: a message inside a known window is held without a
  round trip (and its actions are not rendered); what it lets through comes back as a
  `Pending` and is confirmed (`admit`) before anything runs: once per window per key and
  router in the steady state.
- **Budget**: each distinct concrete subject is a window of its own, so a device
  publishing on ever new `agents.<code>.telemetry.<x>` subjects would turn each message
  into two KV requests and fill the bounded bucket with its windows. So new windows ask
  the bucket within two token buckets per router: SOURCE_RATE a second per source (the
  subject's first two tokens, `agents.<code>`: one device) and KV_RATE for the whole
  tenant. Past either, the decision is made on the local windows (counted in
  `cairn_router_throttle_over_budget_total`, logged at most once a minute): at worst one
  firing per router per window for those keys, still bounded by the tenant's publish
  budget (fanout.py). A flooding device thus spends its own budget, not its neighbours',
  and adds at most SOURCE_RATE entries a second per router to the bucket, which keeps
  the newest entries when full: a sustained flood from many devices at once can still
  evict old windows (those then fire once more per router).
- **KV unavailable** (no connection, a timeout, no bucket, refused): the decision is made
  on the local windows alone (the per-process throttle of before), counted in
  `cairn_router_throttle_fallback_total` and logged at most once a minute per tenant;
  after a failure the bucket is left alone for RETRY_AFTER seconds, so a slow NATS does
  not slow every message. No message is lost or failed for it; during an outage each
  router may fire once per window.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js.errors import APIError, NotFoundError

from rule_router import metrics
from rule_router.fanout import PublishBudget
from rule_router.ledger import delivery
from rule_router.model import Firing
from rule_router.throttle import Throttle

log = logging.getLogger(__name__)

BUCKET = "CAIRN_THROTTLE"  # the same name in pb_hooks_bridge/streams.py and the migration
STREAM = f"KV_{BUCKET}"
PREFIX = f"$KV.{BUCKET}."
MAX_WINDOW = 31 * 86_400  # seconds: the bucket's max_age
TTL_SLACK = 5  # seconds an entry outlives its window (clock skew between routers)
TIMEOUT = 1.0  # seconds for one KV request
RETRY_AFTER = 5.0  # seconds without KV requests after one failed
CAS_TRIES = 3  # reads and writes of one key before the other writers win
PRUNE_EVERY = 1024  # windows remembered between two sweeps of the closed ones
REPORT_EVERY = 60.0  # seconds between two log lines about an unavailable bucket
KV_RATE = 1000.0  # new windows a second per tenant and router that may ask the bucket
KV_BURST = 2000  # saved up at most
SOURCE_RATE = 10.0  # the same per source (`agents.<code>`: one device)
SOURCE_BURST = 20
MAX_SOURCES = 50_000  # sources with a budget of their own (the oldest is forgotten first)
WRONG_LAST = (10071, 10164)  # JetStream's "wrong last sequence" error codes
EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
TTL_HEADER = "Nats-TTL"
_DELETED = ("DEL", "PURGE")  # KV-Operation of a deleted or purged key
_OUTCOME = {o: metrics.THROTTLE.labels(o) for o in ("opened", "held", "redelivery")}  # hot

Seq = int | None  # the stream sequence of a JetStream message; None for a core one


def kv_key(identity: str, key: Hashable) -> str:
    """The bucket key of a window: `(rule id, subject)` hashed under the identity."""
    rule_id, subject = key if isinstance(key, tuple) else (str(key), "")
    digest = hashlib.sha256(f"{rule_id}\x00{subject}".encode()).hexdigest()[:32]
    return f"{identity}.{digest}"


def ttl(window: float) -> int:
    """Whole seconds an entry of `window` is kept (nats-server's TTL granularity)."""
    return min(MAX_WINDOW, math.ceil(window) + TTL_SLACK)


@dataclass(frozen=True, slots=True)
class Stored:
    """A key as read: its revision, and the window it holds (until 0: none)."""

    revision: int
    until: float
    seq: Seq


class Gate(Throttle):
    """The throttle `evaluate` sees for one message (`reply`: its JetStream ack subject,
    if any): held when this router knows the window is open and was not opened by this
    message; otherwise let through and noted in `pending`, for `SharedThrottle.admit` to
    confirm before anything runs."""

    def __init__(self, shared: SharedThrottle, reply: str | None) -> None:
        super().__init__()
        self.shared = shared
        self.reply = reply
        self.pending: dict[Hashable, float] = {}

    def __bool__(self) -> bool:  # not its (empty) table's length
        return True

    @functools.cached_property
    def seq(self) -> Seq:
        """The message's stream sequence (read only when a throttled rule matched)."""
        seen = delivery(self.reply)
        return seen[0] if seen is not None else None

    def allow(self, key: Hashable, window: float | None) -> bool:
        if not window:
            return True
        if self.shared.held(key, self.seq):
            _OUTCOME["held"].inc()
            return False
        self.pending[key] = window
        return True


class Pending(list[Firing]):
    """What `evaluate` returns when throttled rules matched: its firings, and the gate
    whose keys `SharedThrottle.admit` must confirm before any of them runs."""

    def __init__(self, firings: list[Firing], gate: Gate) -> None:
        super().__init__(firings)
        self.gate = gate


class SharedThrottle:
    """One tenant's windows for one router identity; `connection` gives the tenant's
    current NATS connection (None while there is none)."""

    def __init__(self, slug: str, identity: str, connection: Callable[[], NATS | None],
                 clock: Callable[[], float] = time.time) -> None:
        self.slug = slug
        self.identity = identity
        self.clock = clock
        self._connection = connection
        self._known: dict[Hashable, tuple[float, Seq]] = {}  # key -> (until, opener)
        self._since_prune = 0
        self._down_until = 0.0  # time.monotonic(): no KV requests before then
        self._js: Any = None
        self._js_of: NATS | None = None
        self._reports = Throttle()
        self._budget = PublishBudget(KV_RATE, KV_BURST)
        self._sources: dict[str, PublishBudget] = {}

    def __len__(self) -> int:
        return len(self._known)

    def gate(self, reply: str | None) -> Gate:
        return Gate(self, reply)

    def held(self, key: Hashable, seq: Seq) -> bool:
        """True when a window known here is open and another message opened it."""
        known = self._known.get(key)
        if known is None or known[0] <= self.clock():
            return False
        return seq is None or known[1] != seq

    async def admit(self, gate: Gate, firings: list[Firing]) -> list[Firing]:
        """The firings the shared windows allow; every key the gate let through is decided
        (a rule whose actions failed to render opens its window too, as in one process)."""
        if not gate.pending:
            return firings
        keys = list(gate.pending.items())
        if len(keys) == 1:
            answers = [await self.acquire(keys[0][0], keys[0][1], gate.seq)]
        else:
            answers = await asyncio.gather(*(self.acquire(k, w, gate.seq) for k, w in keys))
        refused = {key for (key, _), ok in zip(keys, answers, strict=True) if not ok}
        if not refused:
            return firings
        return [f for f in firings if (f.rule.id, f.subject) not in refused]

    async def acquire(self, key: Hashable, window: float, seq: Seq) -> bool:
        """May the rule of `key` fire now for the message `seq`? True opens the window (or
        it is the one this message opened). Never raises: see the fallback above."""
        if time.monotonic() < self._down_until:
            return self._fallback(key, window, seq)
        if not (self._source_budget(key).take() and self._budget.take()):
            metrics.THROTTLE_OVER_BUDGET.inc()
            if self._reports.allow("over-budget", REPORT_EVERY):
                log.warning("shared throttle: more new windows a second than the budget; "
                            "deciding the rest on this router's own windows", extra={
                                "tenant": self.slug, "rate": KV_RATE,
                                "per_source": SOURCE_RATE})
            return self._local(key, window, seq)
        try:
            return await self._acquire(key, window, seq)
        except Exception as exc:  # any failure of the bucket: decide locally
            self._down_until = time.monotonic() + RETRY_AFTER
            if self._reports.allow("unavailable", REPORT_EVERY):
                log.warning("shared throttle unavailable; deciding on this router's own "
                            "windows", extra={"tenant": self.slug, "retry_in": RETRY_AFTER,
                                              "error": str(exc) or repr(exc)})
            return self._fallback(key, window, seq)

    async def _acquire(self, key: Hashable, window: float, seq: Seq) -> bool:
        js = self._jetstream()
        subject = PREFIX + kv_key(self.identity, key)
        for _ in range(CAS_TRIES):
            found = await _read(js, subject)
            now = self.clock()
            if found is not None and found.until > now:
                self._remember(key, found.until, found.seq)
                mine = seq is not None and found.seq == seq
                _OUTCOME["redelivery" if mine else "held"].inc()
                return mine
            until = now + window
            headers = {EXPECTED_LAST: str(found.revision if found else 0),
                       TTL_HEADER: str(ttl(window))}
            try:
                await js.publish(subject, _encode(until, seq), headers=headers)
            except APIError as exc:
                if exc.err_code in WRONG_LAST:
                    continue  # another router wrote it since: read what it wrote
                raise
            self._remember(key, until, seq)
            _OUTCOME["opened"].inc()
            return True
        _OUTCOME["held"].inc()  # the key keeps changing: others fire
        return False

    def _source_budget(self, key: Hashable) -> PublishBudget:
        subject = key[1] if isinstance(key, tuple) and len(key) > 1 else ""
        source = ".".join(str(subject).split(".", 2)[:2])
        budget = self._sources.get(source)
        if budget is None:
            if len(self._sources) >= MAX_SOURCES:
                del self._sources[next(iter(self._sources))]
            budget = self._sources[source] = PublishBudget(SOURCE_RATE, SOURCE_BURST)
        return budget

    def _fallback(self, key: Hashable, window: float, seq: Seq) -> bool:
        metrics.THROTTLE_FALLBACK.inc()
        return self._local(key, window, seq)

    def _local(self, key: Hashable, window: float, seq: Seq) -> bool:
        if self.held(key, seq):
            return False
        known = self._known.get(key)
        if known is None or known[0] <= self.clock():  # else: this message opened it
            self._remember(key, self.clock() + window, seq)
        return True

    def _remember(self, key: Hashable, until: float, seq: Seq) -> None:
        self._known[key] = (until, seq)
        self._since_prune += 1
        if self._since_prune >= PRUNE_EVERY:
            now = self.clock()
            for closed in [k for k, (end, _) in self._known.items() if end <= now]:
                del self._known[closed]
            self._since_prune = 0

    def _jetstream(self) -> Any:
        nc = self._connection()
        if nc is None or not nc.is_connected:  # reconnecting: fail now, not after TIMEOUT
            raise nats.errors.ConnectionClosedError
        if self._js_of is not nc:
            self._js, self._js_of = nc.jetstream(timeout=TIMEOUT), nc
        return self._js


async def _read(js: Any, subject: str) -> Stored | None:
    """The key's last entry (None: there is none). A deleted key or a value that is not
    ours reads as a window that is over, with its revision (to write over it)."""
    try:
        msg = await js.get_msg(STREAM, subject=subject, direct=True)
    except NotFoundError:
        return None
    headers = msg.headers or {}
    if headers.get("KV-Operation") in _DELETED or headers.get("Nats-Marker-Reason"):
        return Stored(int(msg.seq or 0), 0.0, None)
    try:
        value = json.loads(msg.data or b"")
        until, seq = float(value["until"]), value.get("seq")
        return Stored(int(msg.seq or 0), until, seq if isinstance(seq, int) else None)
    except (ValueError, TypeError, KeyError):
        return Stored(int(msg.seq or 0), 0.0, None)


def _encode(until: float, seq: Seq) -> bytes:
    return json.dumps({"until": round(until, 3), "seq": seq}, separators=(",", ":")).encode()
