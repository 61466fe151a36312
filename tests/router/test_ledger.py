"""The ledger without a server: reading a delivery's stream sequence, records bounded by
count and age, partial records, in-flight joins, and the replay throttle."""

from __future__ import annotations

from rule_router.ledger import COMPLETE, Ledger, Partial, Replay, delivery
from rule_router.throttle import Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_reading_a_delivery_from_its_reply_subject():
    assert delivery("$JS.ACK.TELEMETRY.cairn-router.3.41.40.1700000000000000000.0") == (41, 3)
    assert delivery("$JS.ACK.hub.ACCHASH.TELEMETRY.cairn-router.1.7.7.1700000000.5.tok") == (
        7, 1)
    assert delivery("$JS.ACK.hub.ACCHASH.TELEMETRY.cairn-router.2.9.8.1700000000.5") == (9, 2)
    for other in (None, "", "_INBOX.x.y", "$JS.ACK.short.1", "$JS.ACK.S.C.x.y.z.t.n",
                  "$JS.API.CONSUMER.INFO.TELEMETRY.cairn-router.1.2.3.4"):
        assert delivery(other) is None


def test_complete_and_partial_records():
    ledger = Ledger()
    assert ledger.lookup(5) is None
    ledger.partial(5, {"row#0"}, {("row#0", 0)})
    assert ledger.lookup(5) == Partial(frozenset({"row#0"}), frozenset({("row#0", 0)}))
    ledger.complete(5)  # a later delivery finished it
    assert ledger.lookup(5) is COMPLETE
    assert len(ledger) == 1


def test_records_are_bounded_by_count_oldest_first():
    ledger = Ledger(max_entries=3)
    for seq in range(1, 6):
        ledger.complete(seq)
    assert len(ledger) == 3
    assert [ledger.lookup(s) for s in (1, 2)] == [None, None]
    assert all(ledger.lookup(s) is COMPLETE for s in (3, 4, 5))
    ledger.partial(3, {"r"}, set())  # updated: now the newest
    ledger.complete(6)
    assert ledger.lookup(4) is None and ledger.lookup(3) is not None


def test_records_are_bounded_by_age():
    clock = Clock()
    ledger = Ledger(ttl=60, clock=clock)
    ledger.complete(1)
    clock.now += 30
    ledger.complete(2)
    assert ledger.lookup(1) is COMPLETE
    clock.now += 31  # 1 is past its horizon, 2 is not
    assert ledger.lookup(1) is None
    assert ledger.lookup(2) is COMPLETE
    clock.now += 30
    ledger.complete(3)  # a write drops what expired, even unread
    assert len(ledger) == 1


def test_a_redelivery_joins_the_delivery_in_flight():
    ledger = Ledger()
    assert not ledger.join(9, "second") and not ledger.claimed(9)
    ledger.begin(9)
    assert ledger.claimed(9) and not ledger.claimed(None)
    assert ledger.join(9, "second") and ledger.join(9, "third")
    assert ledger.end(9) == ["second", "third"]
    assert not ledger.claimed(9) and ledger.end(9) == []


def test_the_replay_throttle_lets_only_the_rules_that_fired_through():
    windows = Throttle()
    assert windows.allow(("fired#0", "agents.d1.telemetry.x"), 60)  # the first delivery
    replay = Replay(frozenset({"fired#0"}))
    # past its own open window, and always
    assert replay.allow(("fired#0", "agents.d1.telemetry.x"), 60)
    assert replay.allow(("fired#0", "agents.d1.telemetry.x"), None)
    # a rule that did not fire the first time does not fire now, and opens no window
    assert not replay.allow(("other#0", "agents.d1.telemetry.x"), None)
    assert len(replay) == 0
