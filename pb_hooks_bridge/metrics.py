"""Prometheus metrics of the bridge, served on loopback by app.py when a port is set."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ISSUED = Counter("cairn_bridge_identities_issued_total", "User JWTs issued", ["kind"])
REVOKED = Counter("cairn_bridge_identities_revoked_total", "User keys revoked", ["kind"])
PUSHES = Counter("cairn_bridge_account_pushes_total", "Account JWTs accepted by nats-server")
PUSH_FAILURES = Counter("cairn_bridge_account_push_failures_total", "Account pushes that failed")
PUSH_SECONDS = Histogram("cairn_bridge_account_push_seconds", "Account push round trip")
REPAIRS = Counter("cairn_bridge_reconcile_repairs_total", "Differences repaired by reconciliation")
RECONCILES = Counter("cairn_bridge_reconciliations_total", "Reconciliation passes")
EVENT_LAG = Histogram(
    "cairn_bridge_event_lag_seconds", "Record updated -> event handled",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EVENTS = Counter("cairn_bridge_events_total", "Realtime events handled", ["collection", "action"])
ROW_ERRORS = Counter("cairn_bridge_row_errors_total", "Rows skipped for bad data", ["collection"])
CONNECTED = Gauge("cairn_bridge_pocketbase_connected", "1 while the realtime stream is up")
HEARTBEATS = Counter("cairn_bridge_heartbeats_total", "Agent heartbeats accepted by presence")
HEARTBEATS_IGNORED = Counter(
    "cairn_bridge_heartbeats_ignored_total",
    "Messages on agents.*.heartbeat that are not agent heartbeats (e.g. JetStream replies "
    "injected through a forged reply subject); they never mark a device online",
    ["reason"],
)
AUDIT_FAILURES = Counter("cairn_bridge_audit_writer_failures_total",
                         "unexpected failures of the audit writer (retried)")
LANE_BUSY = Gauge("cairn_bridge_lane_busy", "Lane work running now, by pool", ["pool"])
STALE_ROWS = Counter("cairn_bridge_stale_rows_total",
                     "Rows re-read because a newer version had been handled already",
                     ["collection"])
SUPERSEDED = Counter("cairn_bridge_writes_superseded_total",
                     "Bridge writes refused by their precondition: a newer change won",
                     ["collection"])
BACKGROUND_FAILURES = Counter("cairn_bridge_background_failures_total",
                              "Failures of supervised background tasks (retried)", ["task"])
DEVICE_REQUESTS = Counter(
    "cairn_bridge_device_requests_total",
    "Requests devices made over NATS (agents.<code>.ctl.*), by kind and outcome",
    ["kind", "outcome"])
HISTORY_REQUESTS = Counter(
    "cairn_bridge_history_requests_total",
    "History requests people made over NATS (cairn.history.*), by kind and outcome",
    ["kind", "outcome"])
HISTORY_SECONDS = Histogram("cairn_bridge_history_seconds", "Time to answer a history request")
PRESENCE_PENDING = Gauge("cairn_bridge_presence_pending",
                         "Devices whose heartbeats wait for the next presence pass")
PRESENCE_DEFERRED = Counter("cairn_bridge_presence_online_deferred_total",
                            "First `online` writes put off to a later pass (ONLINE_BUDGET)")
PRESENCE_WRITE_FAILURES = Counter("cairn_bridge_presence_write_failures_total",
                                  "Presence row writes that failed (retried on later beats)")
EVENTS_SKIPPED = Counter("cairn_bridge_events_skipped_total",
                         "Realtime events dropped at arrival because only presence fields "
                         "changed (mostly the bridge's own last_seen writes)")
ACCOUNT_CONNECTIONS = Gauge("cairn_bridge_account_connections",
                            "NATS connections of a tenant's account (all servers)", ["tenant"])
ACCOUNT_CONNECTION_LIMIT = Gauge("cairn_bridge_account_connection_limit",
                                 "limits.max_connections of a tenant's account (-1: none)",
                                 ["tenant"])
LEADER = Gauge("cairn_bridge_leader", "1 while this bridge holds the leader lease")
LEASES_LOST = Counter("cairn_bridge_leases_lost_total",
                      "Times this bridge lost the leader lease (it then stands by again)")
KICKS = Counter("cairn_bridge_revocation_kicks_total",
                "Live connections of a just-revoked key cut at once (kicker.py), by outcome: "
                "kicked, gone, failed, no-link, skipped (too many keys in one push)",
                ["outcome"])
KICK_SECONDS = Histogram("cairn_bridge_revocation_kick_seconds",
                         "Time in each step of a kick: find (CONNZ), in-force (until the "
                         "server shows the revocation), kick (the KICK request)", ["step"],
                         buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
EVENT_STEPS = Histogram(
    "cairn_bridge_event_step_seconds",
    "Where a realtime event's time goes: arrive (record updated -> the bridge reads it), "
    "queue (read -> its lane starts), handle (lane start -> done)", ["step"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
