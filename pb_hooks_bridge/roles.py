"""A cache of `nats_roles` rows: tenant-specific roles shadow global ones of the same name."""

from __future__ import annotations

import time
from typing import Any

from pb_hooks_bridge.permissions import Permissions, RoleError, expand_role


class RoleBook:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}  # id -> row
        self._events: dict[str, float] = {}  # id -> when a live event last changed it

    def load(self, rows: list[dict[str, Any]], listed_at: float | None = None) -> None:
        """Replace the cache with a listing made at `listed_at` (time.monotonic()); a live
        event that came after the listing is newer than it and wins."""
        fresh = {row["id"]: row for row in rows}
        if listed_at is not None:
            for row_id, when in self._events.items():
                if when < listed_at:
                    continue
                if row_id in self.rows:
                    fresh[row_id] = self.rows[row_id]
                else:
                    fresh.pop(row_id, None)  # deleted after the listing
        self.rows = fresh
        self._events = {k: v for k, v in self._events.items()
                        if listed_at is not None and v >= listed_at}

    def put(self, row: dict[str, Any]) -> None:
        self.rows[row["id"]] = row
        self._events[row["id"]] = time.monotonic()

    def remove(self, row_id: str) -> dict[str, Any] | None:
        self._events[row_id] = time.monotonic()
        return self.rows.pop(row_id, None)

    def find(self, tenant_id: str, name: str, global_only: bool = False) -> dict[str, Any] | None:
        """The tenant's own role of that name, else the global one. Cairn's own service
        users ask with `global_only`: a tenant admin's role must never shape them."""
        fallback = None
        for row in self.rows.values():
            if row.get("name") != name:
                continue
            if row.get("tenant") == tenant_id and not global_only:
                return row
            if not row.get("tenant"):
                fallback = row
        return fallback

    def permissions(self, tenant_id: str, role_name: str, code: str, slug: str, inbox: str,
                    global_only: bool = False) -> Permissions:
        row = self.find(tenant_id, role_name, global_only)
        if row is None:
            where = "global" if global_only else "neither in the tenant nor global"
            raise RoleError(f"role {role_name!r} does not exist ({where})")
        return expand_role(row, code=code, tenant=slug, inbox=inbox)
