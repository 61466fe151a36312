"""A cache of `sidecars` rows: Cairn's least-privilege components (today the rule router).

Each sidecar generates its own user nkey and writes only the public key to its row; the
bridge signs, in every active tenant, a user JWT for that key in a `nats_users` row named
like the sidecar, with the fixed global role of its kind. No seed ever reaches PocketBase.
"""

from __future__ import annotations

from typing import Any

from cairn_common import nkey

KIND_ROLES = {"router": "router"}  # sidecar kind -> global role its JWTs carry


class SidecarBook:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}  # name -> row

    def load(self, rows: list[dict[str, Any]]) -> None:
        self.rows = {row["name"]: row for row in rows if row.get("name")}

    def put(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """Remember a row; returns the previous version (None when new)."""
        before = self.rows.get(row.get("name", ""))
        if row.get("name"):
            self.rows[row["name"]] = row
        return before

    def remove(self, name: str) -> dict[str, Any] | None:
        return self.rows.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self.rows)

    def role_of(self, name: str) -> str | None:
        row = self.rows.get(name)
        return KIND_ROLES.get(row.get("kind", "")) if row else None

    def key_of(self, name: str) -> str | None:
        """The sidecar's registered public key ("" while it has none or an unusable one),
        or None when no sidecar has that name."""
        row = self.rows.get(name)
        if row is None:
            return None
        key = row.get("nats_public_key") or ""
        return key if key and nkey.public_kind(key) == "user" else ""
