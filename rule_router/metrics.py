"""Prometheus metrics of the router, served on loopback by app.py when a port is set."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVALUATED = Counter("cairn_router_messages_evaluated_total", "Messages evaluated", ["path"])
MATCHES = Counter("cairn_router_matches_total", "Rule firings")
ACTIONS = Counter("cairn_router_actions_total", "Actions run", ["kind", "outcome"])
WEBHOOK_RETRIES = Counter("cairn_router_webhook_retries_total", "Webhook attempts after the first")
DEADLETTERS = Counter("cairn_router_deadletters_total", "Messages sent to alerts.deadletter")
RUNTIME_ERRORS = Counter("cairn_router_runtime_errors_total",
                         "Actions that could not be rendered (missing field, bad subject)")
LOOP_DROPPED = Counter("cairn_router_loop_dropped_total",
                       "Messages not evaluated: they reached the hop limit (rules in a loop)")
FANOUT_DROPPED = Counter("cairn_router_fanout_dropped_total",
                         "Publishes not sent: past the output budget of the message that "
                         "caused them (rules fanning out)")
PUBLISH_THROTTLED = Counter("cairn_router_publish_throttled_total",
                            "Publishes not sent: the tenant was past its publish rate")
SERVER_REPLIES_DROPPED = Counter(
    "cairn_router_server_replies_dropped_total",
    "Messages not evaluated: JetStream API answers (direct gets, status messages, PubAcks) "
    "sent into a rule's subject as the reply of someone else's request")
EVAL_SECONDS = Histogram(
    "cairn_router_evaluation_seconds", "Rule evaluation per message",
    buckets=(0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.01, 0.05),
)
RULES_LOADED = Gauge("cairn_router_rules_loaded", "Rules active")
RULES_INVALID = Gauge("cairn_router_rules_invalid", "Rule rows or files that do not validate")
CONNECTED = Gauge("cairn_router_pocketbase_connected", "1 while the realtime stream is up")
CONSUMER_ERRORS = Counter(
    "cairn_router_consumer_errors_total",
    "Failures in a tenant's telemetry consumer, retried with backoff (stage: subscribe, "
    "fetch, batch, message, action, core)", ["stage"])
REDELIVERIES = Counter(
    "cairn_router_redeliveries_total",
    "Redelivered JetStream messages the router had a record of (outcome: skipped = all "
    "actions had run, acked; resumed = only the missing ones ran; joined = the first "
    "delivery was still running)", ["outcome"])
ACTIONS_SKIPPED = Counter("cairn_router_actions_skipped_total",
                          "Actions not run again on a redelivered message: they had run")
ALERTS_CORE_FALLBACK = Counter(
    "cairn_router_alerts_core_fallback_total",
    "Alerts published as core messages (not stored): the tenant has no ALERTS stream")
THROTTLE = Counter(
    "cairn_router_throttle_total",
    "Decisions on throttled rules with the windows shared by the routers (outcome: opened "
    "= fired and opened a window, held = inside another message's window, redelivery = "
    "the window this very message opened)", ["outcome"])
THROTTLE_OVER_BUDGET = Counter(
    "cairn_router_throttle_over_budget_total",
    "Decisions on throttled rules made on this router's own windows because the tenant "
    "asked the shared bucket more often than its budget (shared_throttle.py KV_RATE)")
THROTTLE_FALLBACK = Counter(
    "cairn_router_throttle_fallback_total",
    "Decisions on throttled rules made on this router's own windows: the shared throttle "
    "bucket was unavailable (no connection, timeout, no bucket, refused)")
