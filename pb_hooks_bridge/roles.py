"""A cache of `nats_roles` rows: tenant-specific roles shadow global ones of the same name."""

from __future__ import annotations

from typing import Any

from pb_hooks_bridge.permissions import Permissions, RoleError, expand_role


class RoleBook:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}  # id -> row

    def load(self, rows: list[dict[str, Any]]) -> None:
        self.rows = {row["id"]: row for row in rows}

    def put(self, row: dict[str, Any]) -> None:
        self.rows[row["id"]] = row

    def remove(self, row_id: str) -> dict[str, Any] | None:
        return self.rows.pop(row_id, None)

    def find(self, tenant_id: str, name: str) -> dict[str, Any] | None:
        fallback = None
        for row in self.rows.values():
            if row.get("name") != name:
                continue
            if row.get("tenant") == tenant_id:
                return row
            if not row.get("tenant"):
                fallback = row
        return fallback

    def permissions(self, tenant_id: str, role_name: str, code: str, slug: str) -> Permissions:
        row = self.find(tenant_id, role_name)
        if row is None:
            raise RoleError(f"role {role_name!r} does not exist (neither in the tenant nor global)")
        return expand_role(row, code=code, tenant=slug)
