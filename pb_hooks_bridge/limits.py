"""Tenant `limits` JSON -> NATS account limits, strictly typed, with sane defaults."""

from __future__ import annotations

from typing import Any

# tenant.limits key -> (NATS account limit key, default). -1 means unlimited.
# JetStream storage defaults to -1: nats-server *reserves* a positive account limit against
# the server's own max store at push time, which would cap a server at a handful of
# tenants. The TELEMETRY stream is bounded by age instead; set explicit limits per tenant
# where a hard quota is wanted.
LIMIT_KEYS: dict[str, tuple[str, int]] = {
    "max_connections": ("conn", 10_000),
    "max_leafnodes": ("leaf", 0),
    "max_subscriptions": ("subs", -1),
    "max_payload": ("payload", 1024 * 1024),
    "max_data": ("data", -1),
    "jetstream_memory": ("mem_storage", -1),
    "jetstream_storage": ("disk_storage", -1),
    "max_streams": ("streams", 16),
    "max_consumers": ("consumer", 256),
}


class LimitsError(ValueError):
    """The tenant's limits JSON has an unknown key or a value of the wrong type."""


def account_limits(raw: Any) -> dict[str, Any]:
    """NATS `limits` for an account JWT; JetStream is on because both storages are non-zero."""
    if raw in (None, ""):
        raw = {}
    if not isinstance(raw, dict):
        raise LimitsError(f"limits must be a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(LIMIT_KEYS))
    if unknown:
        raise LimitsError(
            f"limits: unknown key {unknown[0]!r} (known: {', '.join(sorted(LIMIT_KEYS))})"
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
    return limits


DISABLED_LIMITS: dict[str, Any] = {"conn": 0, "leaf": 0}
