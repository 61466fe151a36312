"""Which version of each record the bridge has seen last, so an older copy is never applied
over a newer one.

Copies of a row reach the bridge from live events, from reconciliation listings, and from
the bridge's own writes (PocketBase answers with the stored row). A listing made before a
disable, or an event queued behind the bridge's own write, is older than what the bridge
has already seen for that id. Every handler (event or reconcile step, in the record's lane)
asks `stale()` first and re-reads the row when its copy is older. PocketBase's `updated`
(UTC, milliseconds, sorts as text) orders the versions; a deleted record is a tombstone
that sorts after every timestamp, so nothing resurrects it.

Entries are pruned after each full reconciliation (its listings supersede them), so the
map stays as small as the churn between two passes.

Per collection it also keeps a watermark (`newest`): the `updated` an incremental catch-up
lists from. It is kept apart from the per-record map and only `advance()` moves it: with
versions delivered by the realtime stream (handed over only once the catch-up before them
succeeded) and with a catch-up's listings once every listed row was applied. Never with
the bridge's own writes or re-reads: those stamp rows changed while events were lost, and
a watermark past them would make the next catch-up (after one that failed) skip them.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from cairn_common.pocketbase import pb_date

DELETED = "~deleted"  # "~" sorts after every PocketBase timestamp


class Freshness:
    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, float]] = {}  # "collection:id" -> (updated, mono)
        self.newest: dict[str, str] = {}  # collection -> catch-up watermark (advance())

    def saw(self, collection: str, record: dict[str, Any], deleted: bool = False) -> None:
        """Remember a version of a record (from an event, a listing, a re-read or our own
        write), to skip older copies of it. Leaves the catch-up watermark alone."""
        row_id = record.get("id")
        stamp = DELETED if deleted else str(record.get("updated") or "")
        if not row_id or not stamp:
            return
        key = f"{collection}:{row_id}"
        known = self.seen.get(key)
        if known is None or stamp >= known[0]:
            self.seen[key] = (stamp, time.monotonic())

    def advance(self, collection: str, updated: str) -> None:
        """Move the catch-up watermark: `updated` of a version delivered by the realtime
        stream, or the newest of a catch-up listing applied in full. Nothing else."""
        stamp = str(updated or "")
        if stamp and stamp != DELETED and stamp > self.newest.get(collection, ""):
            self.newest[collection] = stamp

    def stale(self, collection: str, record: dict[str, Any]) -> bool:
        """Is this copy older than a version already seen (or the record deleted)?"""
        known = self.seen.get(f"{collection}:{record.get('id')}")
        return known is not None and str(record.get("updated") or "") < known[0]

    def live_since(self, collection: str, row_id: str, since: float) -> bool:
        """Was a live copy of this record seen at or after `since` (monotonic), with no
        delete after it?"""
        found = self.seen.get(f"{collection}:{row_id}")
        return found is not None and found[0] != DELETED and found[1] >= since

    def deleted(self, collection: str, row_id: str) -> bool:
        known = self.seen.get(f"{collection}:{row_id}")
        return known is not None and known[0] == DELETED

    def watermark(self, collection: str, floor: float, margin: float) -> str:
        """`updated` to list from after a gap: the newest version seen, or `floor` (epoch
        seconds, e.g. when the last full listing began) if later, minus `margin` seconds."""
        stamp = pb_date(floor - margin)
        newest = self.newest.get(collection, "")
        if newest and newest != DELETED:
            try:
                seen_at = datetime.fromisoformat(newest.replace("Z", "+00:00")).timestamp()
            except ValueError:
                return stamp
            return max(stamp, pb_date(seen_at - margin))
        return stamp

    def prune(self, before: float) -> int:
        """Forget versions seen before `before` (time.monotonic()); returns how many."""
        old = [k for k, (_, when) in self.seen.items() if when < before]
        for key in old:
            del self.seen[key]
        return len(old)
