"""Tenant `limits` JSON -> NATS account limits, strictly typed, with sane defaults."""

from __future__ import annotations

from typing import Any

MIB = 1024 * 1024

# tenant.limits key -> (NATS account limit key, default). -1 means unlimited.
# Every tenant's JetStream use is bounded by default (SPEC §11): one tenant can never fill
# the store all tenants share. nats-server *reserves* a positive account limit against its
# own max_file_store/max_memory_store, so the server's stores are sized for the sum of the
# tenants' quotas (CAIRN_NATS_MAX_FILE_STORE / CAIRN_NATS_MAX_MEMORY_STORE; see
# docs/decisions/0003-bounded-tenant-storage.md).
LIMIT_KEYS: dict[str, tuple[str, int]] = {
    # sized for a large fleet (20,000 agents), below one server's own 64K: one tenant
    # never takes every connection (conn_limits.py shows it in tenants.error when reached)
    "max_connections": ("conn", 25_000),
    "max_leafnodes": ("leaf", 0),
    "max_subscriptions": ("subs", -1),
    "max_payload": ("payload", MIB),
    "max_data": ("data", -1),
    "jetstream_memory": ("mem_storage", 8 * MIB),
    "jetstream_storage": ("disk_storage", 512 * MIB),
    "max_streams": ("streams", 16),
    "max_consumers": ("consumer", 256),
}
# tenant.limits keys that bound the tenant's TELEMETRY stream (not account limits).
# Oldest messages go first when the stream is full: the newest telemetry always fits.
STREAM_KEYS: dict[str, int] = {"telemetry_max_bytes": 256 * MIB}


class LimitsError(ValueError):
    """The tenant's limits JSON has an unknown key or a value of the wrong type."""


def account_limits(raw: Any) -> dict[str, Any]:
    """NATS `limits` for an account JWT; JetStream is on because both storages are non-zero."""
    if raw in (None, ""):
        raw = {}
    if not isinstance(raw, dict):
        raise LimitsError(f"limits must be a JSON object, got {type(raw).__name__}")
    known = set(LIMIT_KEYS) | set(STREAM_KEYS)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise LimitsError(
            f"limits: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )
    limits: dict[str, Any] = {"imports": -1, "exports": -1, "wildcards": True}
    for key, (nats_key, default) in LIMIT_KEYS.items():
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise LimitsError(f"limits.{key} must be an integer, got {value!r}")
        if value < -1:
            raise LimitsError(f"limits.{key} must be -1 (unlimited) or >= 0, got {value}")
        limits[nats_key] = value
    for key in ("jetstream_memory", "jetstream_storage"):
        if limits[LIMIT_KEYS[key][0]] == 0:
            raise LimitsError(f"limits.{key} must not be 0: JetStream (telemetry) needs it")
    stream = telemetry_max_bytes(raw)
    storage = limits[LIMIT_KEYS["jetstream_storage"][0]]
    if storage > 0 and stream > storage:
        raise LimitsError(f"limits.telemetry_max_bytes ({stream}) must not exceed "
                          f"limits.jetstream_storage ({storage})")
    return limits


def telemetry_max_bytes(raw: Any) -> int:
    """The TELEMETRY stream's size bound in bytes (always positive: never unbounded)."""
    value = (raw or {}).get("telemetry_max_bytes", STREAM_KEYS["telemetry_max_bytes"]) \
        if isinstance(raw, dict) else STREAM_KEYS["telemetry_max_bytes"]
    if isinstance(value, bool) or not isinstance(value, int) or value < MIB:
        raise LimitsError(f"limits.telemetry_max_bytes must be an integer >= {MIB} (1 MiB), "
                          f"got {value!r}")
    return value


DISABLED_LIMITS: dict[str, Any] = {"conn": 0, "leaf": 0}
