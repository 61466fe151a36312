"""What already ran for a JetStream message, so that a redelivery does not run it again.

A telemetry message is acked only after its actions ran. When the ack is lost (the
connection dropped or was swapped before the ack reached the server) or some actions
failed and the message was handed back (nak), the server delivers it again, and without a
record every action would run again: a second webhook call, a second alert. The ledger
keeps, per stream sequence, which actions completed — `(rule id, action index)` — and
whether all of them did:

- all done: the redelivery is acked without being evaluated;
- some done: the redelivery runs only the missing actions, and only of the rules that
  fired the first time (`Replay`: the throttle window the first delivery opened must not
  swallow them, and a rule that did not fire then must not fire now);
- still running (the first delivery is in flight, e.g. a webhook stuck past the ack wait):
  the redelivery joins it and is acked or handed back with it.

Bounded: at most MAX_ENTRIES per tenant (oldest first out) and none older than TTL. A
redelivery of a finished message comes about one ack wait after its delivery, or when the
server is back after an outage; past that horizon at-least-once wins and the actions run
again (alerts stored in ALERTS are still de-duplicated by their `Nats-Msg-Id` inside the
stream's duplicate window, `alerts.py`). In memory only: a restarted router starts empty,
with the same fallback. Pure: no I/O.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from rule_router.throttle import Throttle

MAX_ENTRIES = 100_000  # messages remembered per tenant
TTL = 900.0  # seconds a record is kept (well past the ack wait of a redelivery)

Key = tuple[str, int]  # (rule id, action index)


def delivery(reply: str | None) -> tuple[int, int] | None:
    """(stream sequence, times delivered) of a JetStream delivery, read from its
    `$JS.ACK...` reply subject; None for anything else. Cheaper than `msg.metadata`
    (no timestamp is built): it runs for every message taken from the consumer."""
    if not reply or not reply.startswith("$JS.ACK."):
        return None
    tokens = reply.split(".")
    try:
        if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<n>
            return int(tokens[5]), int(tokens[4])
        if len(tokens) >= 11:  # ... with <domain>.<account hash> after $JS.ACK
            return int(tokens[7]), int(tokens[6])
    except ValueError:
        return None
    return None


@dataclass(frozen=True)
class Partial:
    """A message some of whose actions ran: `fired` the rules that fired at its first
    delivery, `done` the actions that completed (ran, were dead-lettered or dropped)."""

    fired: frozenset[str]
    done: frozenset[Key]


COMPLETE = Partial(frozenset(), frozenset())  # sentinel: every action ran


class Replay(Throttle):
    """The throttle for a redelivered message: the rules that fired the first time pass
    (their window is the one that delivery opened), every other rule is held back
    without opening a window."""

    def __init__(self, fired: frozenset[str]) -> None:
        super().__init__()
        self.fired = fired

    def allow(self, key: Hashable, window: float | None) -> bool:
        return isinstance(key, tuple) and bool(key) and key[0] in self.fired


class Ledger:
    """Completion records and in-flight deliveries of one tenant's consumer."""

    def __init__(self, max_entries: int = MAX_ENTRIES, ttl: float = TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self.clock = clock
        self._records: OrderedDict[int, tuple[float, Partial]] = OrderedDict()
        self._inflight: dict[int, list[Any]] = {}  # sequence -> later deliveries joined

    def __len__(self) -> int:
        return len(self._records)

    # -- records ----------------------------------------------------------------------

    def lookup(self, seq: int) -> Partial | None:
        """COMPLETE, a Partial, or None (never seen, or forgotten)."""
        found = self._records.get(seq)
        if found is None:
            return None
        if found[0] <= self.clock():
            del self._records[seq]
            return None
        return found[1]

    def complete(self, seq: int) -> None:
        self._put(seq, COMPLETE)

    def partial(self, seq: int, fired: Iterable[str], done: Iterable[Key]) -> None:
        self._put(seq, Partial(frozenset(fired), frozenset(done)))

    def _put(self, seq: int, record: Partial) -> None:
        now = self.clock()
        self._records[seq] = (now + self.ttl, record)
        self._records.move_to_end(seq)
        while self._records:  # oldest first: insertion order is expiry order
            oldest_seq, (expires, _) = next(iter(self._records.items()))
            if len(self._records) <= self.max_entries and expires > now:
                break
            del self._records[oldest_seq]

    # -- in flight --------------------------------------------------------------------

    def begin(self, seq: int) -> None:
        """The delivery of `seq` in hand is being acted on."""
        self._inflight.setdefault(seq, [])

    def join(self, seq: int, msg: Any) -> bool:
        """True when `seq` is in flight: `msg` (a later delivery) is settled with it."""
        joined = self._inflight.get(seq)
        if joined is None:
            return False
        joined.append(msg)
        return True

    def end(self, seq: int) -> list[Any]:
        """`seq` is settled; the deliveries that joined it, to settle the same way."""
        return self._inflight.pop(seq, [])

    def claimed(self, seq: int | None) -> bool:
        return seq is not None and seq in self._inflight
