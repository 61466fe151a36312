"""Tenant `limits` JSON -> NATS account limits, strictly typed, with sane defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MIB = 1024 * 1024

# tenant.limits key -> (NATS account limit key, default). -1 means unlimited.
# Every tenant's JetStream use is bounded by default (SPEC §11): one tenant can never fill
# the store all tenants share. nats-server *reserves* a positive account limit against its
# own max_file_store/max_memory_store, so the server's stores are sized for the sum of the
# tenants' quotas (CAIRN_NATS_MAX_FILE_STORE / CAIRN_NATS_MAX_MEMORY_STORE; see
# docs/decisions/0003-bounded-tenant-storage.md). max_connections is sized for a large
# fleet (20,000 agents), below one server's own 64K: one tenant never takes every
# connection (conn_limits.py shows it in tenants.error when reached).
# The keys live in cairn_common/tenant_limits.json, which PocketBase's hook reads too
# (pb_hooks/lib/record_checks.js): a tenant with bad limits is refused at once, with the
# same words, every problem listed.
SPEC_PATH = Path(__file__).resolve().parents[1] / "cairn_common" / "tenant_limits.json"
_SPEC = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
LIMIT_KEYS: dict[str, tuple[str, int]] = {
    key: (rule["nats"], rule["default"]) for key, rule in _SPEC["account"].items()}
NONZERO = [key for key, rule in _SPEC["account"].items() if rule.get("nonzero")]
# tenant.limits keys that bound the tenant's TELEMETRY stream (not account limits).
# Oldest messages go first when the stream is full: the newest telemetry always fits.
STREAM_KEYS: dict[str, int] = {key: rule["default"] for key, rule in _SPEC["stream"].items()}


class LimitsError(ValueError):
    """The tenant's limits JSON has an unknown key or a value of the wrong type."""


SAFE = 2**53 - 1  # larger integers lose precision in PocketBase's JSON (and in JS)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -SAFE <= value <= SAFE


def problems(raw: Any) -> list[str]:
    """Every problem of a tenant's `limits` ([] when it is fine)."""
    if raw in (None, ""):
        raw = {}
    if not isinstance(raw, dict):
        return [f"limits must be a JSON object, got {type(raw).__name__}"]
    known = sorted(set(LIMIT_KEYS) | set(STREAM_KEYS))
    found = [f"limits: unknown key {key!r} (known: {', '.join(known)})"
             for key in sorted(set(raw) - set(known))]
    for key, (_, default) in LIMIT_KEYS.items():
        value = raw.get(key, default)
        if not _integer(value):
            found.append(f"limits.{key} must be an integer, got {value!r}")
        elif value < -1:
            found.append(f"limits.{key} must be -1 (unlimited) or >= 0, got {value}")
        elif value == 0 and key in NONZERO:
            found.append(f"limits.{key} must not be 0: JetStream (telemetry) needs it")
    stream = raw.get("telemetry_max_bytes", STREAM_KEYS["telemetry_max_bytes"])
    if not _integer(stream) or stream < MIB:
        found.append(f"limits.telemetry_max_bytes must be an integer >= {MIB} (1 MiB), "
                     f"got {stream!r}")
    else:
        storage = raw.get("jetstream_storage", LIMIT_KEYS["jetstream_storage"][1])
        if _integer(storage) and storage > 0 and stream > storage:
            found.append(f"limits.telemetry_max_bytes ({stream}) must not exceed "
                         f"limits.jetstream_storage ({storage})")
    return found


def account_limits(raw: Any) -> dict[str, Any]:
    """NATS `limits` for an account JWT; JetStream is on because both storages are non-zero."""
    found = problems(raw)
    if found:
        raise LimitsError("; ".join(found))
    raw = raw or {}
    limits: dict[str, Any] = {"imports": -1, "exports": -1, "wildcards": True}
    for key, (nats_key, default) in LIMIT_KEYS.items():
        limits[nats_key] = raw.get(key, default)
    return limits


def telemetry_max_bytes(raw: Any) -> int:
    """The TELEMETRY stream's size bound in bytes (always positive: never unbounded)."""
    value = (raw or {}).get("telemetry_max_bytes", STREAM_KEYS["telemetry_max_bytes"]) \
        if isinstance(raw, dict) else STREAM_KEYS["telemetry_max_bytes"]
    if not _integer(value) or value < MIB:
        raise LimitsError(f"limits.telemetry_max_bytes must be an integer >= {MIB} (1 MiB), "
                          f"got {value!r}")
    return value


DISABLED_LIMITS: dict[str, Any] = {"conn": 0, "leaf": 0}
