"""The role cache against a reconciliation that listed the roles before a live event."""

from __future__ import annotations

import time

from pb_hooks_bridge.roles import RoleBook


def _role(row_id: str, name: str, subject: str = "agents.{code}.>") -> dict:
    return {"id": row_id, "name": name, "tenant": "t", "publish_allow": [subject]}


def test_an_event_after_the_listing_wins_over_it():
    book = RoleBook()
    book.load([_role("old", "old")])
    listed_at = time.monotonic()
    listing = [_role("old", "old"), _role("gone", "gone")]  # what the pass read
    book.put(_role("new", "new"))  # created while the pass ran
    book.put(_role("old", "old", "agents.{code}.telemetry.>"))  # edited meanwhile
    book.remove("gone")  # deleted meanwhile
    book.load(listing, listed_at)
    assert set(book.rows) == {"old", "new"}
    assert book.rows["old"]["publish_allow"] == ["agents.{code}.telemetry.>"]


def test_a_listing_after_the_events_replaces_everything():
    """Control: events older than the listing are already in it (or gone from it)."""
    book = RoleBook()
    book.put(_role("a", "a"))
    book.put(_role("b", "b"))
    listed_at = time.monotonic()
    book.load([_role("a", "a")], listed_at)
    assert set(book.rows) == {"a"}
    assert book._events == {}
