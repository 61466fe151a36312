"""People's caches after a listing (a gap in the realtime stream): what changed unseen goes
back through the rows' lanes. Pure cache logic: no server is involved."""

from __future__ import annotations

import time

from pb_hooks_bridge.people import People


def _people(rows: list[dict]) -> tuple[People, list[str]]:
    people = People(pb=None, identities=None, ttl=3600)  # type: ignore[arg-type]
    requeued: list[str] = []
    people.requeue = lambda row: requeued.append(row["id"])
    people.book.keys = {r["id"]: r for r in rows}
    return people, requeued


ROWS = [{"id": "k1", "membership": "m1", "user": "u1", "jwt": "x"},
        {"id": "k2", "membership": "m2", "user": "u2", "jwt": "x"},
        {"id": "k3", "membership": "m3", "user": "u3", "jwt": "x"}]
MEMBERSHIPS = [{"id": "m1", "role": "operator"}, {"id": "m2", "role": "viewer"},
               {"id": "m3", "role": "viewer"}]


def test_a_listing_requeues_what_changed_unseen():
    people, requeued = _people(ROWS)
    people.load(MEMBERSHIPS, [], time.monotonic())
    assert requeued == []  # control: nothing changed
    changed = [{"id": "m1", "role": "viewer"}, {"id": "m3", "role": "viewer"}]  # m2 gone
    people.load(changed, ["u3"], time.monotonic())
    assert sorted(requeued) == ["k1", "k2", "k3"]


def test_a_live_event_after_the_listing_wins():
    people, requeued = _people(ROWS)
    people.load(MEMBERSHIPS, [], time.monotonic())
    listed_at = time.monotonic()
    people.user_changed({"id": "u2", "disabled": True}, deleted=False)  # seen live
    assert requeued == ["k2"]
    people.load(MEMBERSHIPS, [], listed_at)  # a listing from before the disable
    assert "u2" in people.book.disabled
