"""A tenant's JetStream streams: TELEMETRY (agents' documents) and ALERTS (what rules
publish on `alerts.>`), both bounded by age and size inside the tenant's quota, and the
CAIRN_THROTTLE KV bucket where the routers keep the throttle windows they share
(rule_router/shared_throttle.py).

nats-server reserves a stream's `max_bytes` against the account's `disk_storage` limit
(limits.py `jetstream_storage`). TELEMETRY gets the tenant's `telemetry_max_bytes`; ALERTS
gets ALERTS_MAX_BYTES, or half of what the quota leaves beside TELEMETRY when that is less
(the other half stays free for streams the tenant's own service users make). ALERTS is
created only with at least 1 MiB; an existing one is shrunk to what is left (the oldest
alerts go), or deleted when nothing is left. When bounds change, streams that shrink are
updated before streams that grow, so the sum never passes the quota on the way.

CAIRN_THROTTLE is in memory: its entries are small and short-lived (each has a per-message
TTL of its window), read on the routers' hot path, and worth no disk quota; a NATS restart
that loses it only lets each throttled rule fire once more, as a router restart did. It
takes THROTTLE_MAX_BYTES, or half the tenant's `jetstream_memory` when that is less (none
below MIN_THROTTLE_BYTES: the routers then keep their windows per process, counted); when
full, the oldest windows go first. Only the router's NATS user may use it, and only its own
identity's keys (pb_migrations/1764000005_router_throttle.js).

Replicas: `replicas` (the bridge's `CAIRN_NATS_REPLICAS`, 3 on a 3-node cluster, default 1)
for both streams; an existing stream is scaled to it. A server that is not clustered, or a
cluster with too few nodes up, refuses that many: the stream is then made (or kept) R1,
with a warning, and scaled up by a later pass (every full reconciliation compares).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from pb_hooks_bridge.accounts import Account
from pb_hooks_bridge.audit import AuditWriter
from pb_hooks_bridge.limits import MIB

log = logging.getLogger(__name__)

TELEMETRY = "TELEMETRY"
TELEMETRY_SUBJECTS = ["agents.*.telemetry.>"]
ALERTS = "ALERTS"
ALERTS_SUBJECTS = ["alerts.>"]
ALERTS_MAX_BYTES = 64 * MIB
MAX_MSG_SIZE = MIB  # one document; larger publishes are refused
MIN_STREAM_BYTES = MIB
THROTTLE_BUCKET = "CAIRN_THROTTLE"  # rule_router/shared_throttle.py BUCKET
THROTTLE = f"KV_{THROTTLE_BUCKET}"
THROTTLE_MAX_BYTES = 4 * MIB
MIN_THROTTLE_BYTES = 64 * 1024
THROTTLE_MAX_AGE = 31 * 86_400  # seconds: the longest window shared by the routers
# JetStream error codes after which a stream is made (or kept) with one replica
NOT_CLUSTERED = 10074  # replicas > 1 not supported in non-clustered mode
NO_PEERS = 10005  # no suitable peers for placement (cluster nodes down)


def alerts_max_bytes(account: Any) -> int:
    """ALERTS' size bound: the default, or half the room the quota leaves beside TELEMETRY."""
    storage = int(account.limits.get("disk_storage", -1))
    if storage < 0:
        return ALERTS_MAX_BYTES
    return min(ALERTS_MAX_BYTES, max(0, storage - account.telemetry_max_bytes) // 2)


def throttle_max_bytes(account: Any) -> int:
    """CAIRN_THROTTLE's size bound: the default, or half the tenant's memory quota."""
    memory = int(account.limits.get("mem_storage", -1))
    return THROTTLE_MAX_BYTES if memory < 0 else min(THROTTLE_MAX_BYTES, memory // 2)


def throttle_config(max_bytes: int, replicas: int = 1) -> StreamConfig:
    """The stream of a KV bucket (as nats-py's create_key_value makes it, history 1) with
    per-message TTLs allowed and the oldest entries dropped when full."""
    return StreamConfig(
        name=THROTTLE, subjects=[f"$KV.{THROTTLE_BUCKET}.>"], storage=StorageType.MEMORY,
        num_replicas=replicas, max_msgs_per_subject=1, max_age=float(THROTTLE_MAX_AGE),
        max_bytes=max_bytes, max_msg_size=4096, discard=DiscardPolicy.OLD,
        allow_msg_ttl=True, allow_direct=True, allow_rollup_hdrs=False, deny_delete=True,
        deny_purge=True,  # a router may write its own keys, never wipe the others
        duplicate_window=120.0, max_consumers=-1, max_msgs=-1)


def stream_config(name: str, subjects: list[str], max_bytes: int, max_age: int,
                  replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=name, subjects=subjects, storage=StorageType.FILE, num_replicas=replicas,
        # bounded by age and size; when full the oldest messages go first
        max_age=float(max_age), max_bytes=max_bytes, max_msg_size=MAX_MSG_SIZE,
        discard=DiscardPolicy.OLD, duplicate_window=120.0,
        allow_direct=True,  # viewers read history with direct gets (no consumers)
    )


def differs(current: StreamConfig, config: StreamConfig) -> bool:
    if config.allow_msg_ttl and (not current.allow_msg_ttl  # the throttle bucket
                                 or current.max_msgs_per_subject != 1):
        return True
    return (current.subjects != config.subjects
            or int(current.max_age or 0) != int(config.max_age or 0)
            or current.max_bytes != config.max_bytes
            or current.max_msg_size != config.max_msg_size
            or current.discard != config.discard
            or (current.num_replicas or 1) != (config.num_replicas or 1)
            or not current.allow_direct)


async def _current(js: Any, name: str) -> StreamConfig | None:
    try:
        return (await js.stream_info(name)).config
    except NotFoundError:
        return None


async def ensure_streams(js: Any, account: Account, max_age: int, audit: AuditWriter,
                         replicas: int = 1) -> None:
    """Create, update (shrinking ones first) or, for ALERTS without room, delete."""
    telemetry = stream_config(TELEMETRY, TELEMETRY_SUBJECTS, account.telemetry_max_bytes,
                              max_age, replicas)
    room = alerts_max_bytes(account)
    current = {TELEMETRY: await _current(js, TELEMETRY), ALERTS: await _current(js, ALERTS)}
    wanted = [telemetry]
    if room >= MIN_STREAM_BYTES or (room > 0 and current[ALERTS] is not None):
        wanted.append(stream_config(ALERTS, ALERTS_SUBJECTS, room, max_age, replicas))
    elif current[ALERTS] is not None:
        log.warning("ALERTS deleted: the tenant's jetstream_storage leaves it no room "
                    "beside telemetry_max_bytes", extra={"tenant": account.slug})
        await js.delete_stream(ALERTS)
        audit.record("stream.deleted", account.tenant_id, f"streams/{ALERTS}",
                     {"reason": "no room in jetstream_storage"})
    else:
        log.info("no ALERTS stream: the tenant's jetstream_storage leaves less than 1 MiB "
                 "for it beside telemetry_max_bytes", extra={"tenant": account.slug})

    def grows(config: StreamConfig) -> bool:
        before = current[str(config.name)]
        return before is None or (config.max_bytes or 0) > (before.max_bytes or 0)

    changes = [c for c in wanted if current[str(c.name)] is None
               or differs(current[str(c.name)], c)]
    for config in sorted(changes, key=grows):  # False (shrinks) first
        details = {"max_age": max_age, "max_bytes": config.max_bytes,
                   "replicas": config.num_replicas}
        before = current[str(config.name)]
        if before is None:
            await _apply(js.add_stream, config, account)
            audit.record("stream.created", account.tenant_id, f"streams/{config.name}", details)
        elif differs(before, await _apply(js.update_stream, config, account)):
            audit.record("stream.updated", account.tenant_id, f"streams/{config.name}", details)
    await ensure_throttle(js, account, audit, replicas)


async def ensure_throttle(js: Any, account: Account, audit: AuditWriter,
                          replicas: int = 1) -> None:
    """Create or update CAIRN_THROTTLE, or delete it when the memory quota leaves no room
    (its own quota: no order to keep with the file streams)."""
    room, current = throttle_max_bytes(account), await _current(js, THROTTLE)
    if room < MIN_THROTTLE_BYTES:
        if current is not None:
            await js.delete_stream(THROTTLE)
            audit.record("stream.deleted", account.tenant_id, f"streams/{THROTTLE}",
                         {"reason": "no room in jetstream_memory"})
        log.info("no shared throttle bucket: the tenant's jetstream_memory leaves too little "
                 "room; routers keep throttle windows per process", extra={"tenant": account.slug})
        return
    config = throttle_config(room, replicas)
    details = {"max_bytes": room, "replicas": replicas}
    if current is None:
        await _apply(js.add_stream, config, account)
        audit.record("stream.created", account.tenant_id, f"streams/{THROTTLE}", details)
    elif differs(current, config) and differs(current, await _apply(js.update_stream, config,
                                                                     account)):
        audit.record("stream.updated", account.tenant_id, f"streams/{THROTTLE}", details)


async def _apply(call: Any, config: StreamConfig, account: Account) -> StreamConfig:
    """add_stream/update_stream; more replicas than a lone server has fall back to one.
    Returns the config applied."""
    try:
        await call(config)
        return config
    except APIError as exc:
        if exc.err_code not in (NOT_CLUSTERED, NO_PEERS) or (config.num_replicas or 1) <= 1:
            raise
        reason = str(exc.description or exc)
    log.warning("stream kept at one replica for now", extra={
        "tenant": account.slug, "stream": config.name, "replicas": config.num_replicas,
        "error": reason})
    config = replace(config, num_replicas=1)
    await call(config)
    return config
