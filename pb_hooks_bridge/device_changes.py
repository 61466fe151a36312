"""What changed in a device row from one version to the next.

Two uses. The bridge's own presence writes (`online`, `last_seen`) come back as realtime
events, one per write: with 20,000 agents that is hundreds a second, each of which would
take a lane and a slot to find that nothing about the identity changed. `presence_only`
lets the event router drop them at arrival. And a change of `devices.config` is pushed
to the agent as a hint (`config_changed`) so it fetches its desired config over NATS at
once instead of at its next periodic check.
"""

from __future__ import annotations

import json
from typing import Any

PRESENCE_FIELDS = frozenset({"last_seen", "online", "updated"})


def _digest(value: Any) -> int:
    return hash(json.dumps(value, sort_keys=True, default=str))


def _shape(record: dict[str, Any]) -> int:
    return _digest({k: v for k, v in record.items() if k not in PRESENCE_FIELDS})


class DeviceChanges:
    def __init__(self) -> None:
        self.shapes: dict[str, int] = {}  # device id -> digest of all but presence fields
        self.configs: dict[str, int] = {}  # device id -> digest of `config`

    def presence_only(self, record: dict[str, Any]) -> bool:
        """True when this version differs from the last one seen only in presence fields
        (remembers it either way)."""
        row_id = str(record.get("id") or "")
        shape = _shape(record)
        same = self.shapes.get(row_id) == shape
        self.shapes[row_id] = shape
        return same

    def remember(self, record: dict[str, Any]) -> None:
        """A version applied from a listing (a pass): later presence echoes match it."""
        if record.get("id"):
            self.shapes[str(record["id"])] = _shape(record)

    def config_changed(self, record: dict[str, Any]) -> bool:
        """True when `config` differs from the version seen before (not for the first one
        seen: a listing at start seeds every device)."""
        row_id = str(record.get("id") or "")
        digest = _digest(record.get("config"))
        before = self.configs.get(row_id)
        self.configs[row_id] = digest
        return before is not None and before != digest

    def forget(self, row_id: str) -> None:
        self.shapes.pop(row_id, None)
        self.configs.pop(row_id, None)
