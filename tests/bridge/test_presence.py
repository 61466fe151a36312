"""Presence counts only agent heartbeats (pb_hooks_bridge/presence.py `not_a_heartbeat`), on
literal inputs: the agent's own document (built by agent/telemetry.py) passes; what
JetStream publishes into a forged reply subject does not. The live attack and its control
are in tests/security/test_forged_messages.py."""

from __future__ import annotations

import json

import pytest
from nats.js.api import Header

from agent.context import Stats
from agent.telemetry import heartbeat_doc
from pb_hooks_bridge.presence import not_a_heartbeat

CODE = "web-01"
SUBJECT = f"agents.{CODE}.heartbeat"
DIRECT_GET = {"Nats-Stream": "TELEMETRY", "Nats-Subject": "agents.x.telemetry.system",
              "Nats-Sequence": "2", "Nats-Time-Stamp": "2026-01-01T00:00:00Z"}


def _beat(**changes: object) -> bytes:
    doc = {**heartbeat_doc(CODE, Stats()), **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def test_the_agents_heartbeat_is_a_heartbeat():
    """Control: what agent/telemetry.py sends, also without `device` (older agents)."""
    assert not_a_heartbeat(SUBJECT, "", None, _beat()) is None
    assert not_a_heartbeat(SUBJECT, None, {}, _beat(device=...)) is None
    assert not_a_heartbeat(SUBJECT, "_INBOX_web-01.x", None, _beat()) is None


@pytest.mark.parametrize(
    ("reply", "headers", "data", "label"),
    [
        ("", None, b'{"stream":"TELEMETRY","seq":2}', "body"),
        ("", None, b'{"stream":"TELEMETRY","seq":2,"duplicate": true}', "body"),
        ("", None, b'{"type":"io.nats.jetstream.api.v1.stream_info_response"}', "body"),
        ("", None, b"", "body"),
        ("", None, b"alive", "body"),
        ("", None, b'["alive"]', "body"),
        ("", {"Status": "404", Header.DESCRIPTION: "Message Not Found"}, b"", "server-header"),
        ("", DIRECT_GET, None, "server-header"),
        ("", {"nats-last-sequence": "3"}, None, "server-header"),
        ("$JS.ACK.TELEMETRY.c.1.5.5.1700000000.0", None, None, "server-reply"),
        ("", None, "other-device", "body"),
        ("", None, "no-timestamp", "body"),
        ("", None, "bad-timestamp", "body"),
        ("", None, "bool-uptime", "body"),
        ("", None, b"{" + b" " * 20_000 + b"}", "body"),
        ("", None, "stored-subject", "subject"),
    ],
    ids=["puback", "puback-duplicate", "api-response", "empty", "not-json", "list",
         "status-404", "direct-get", "lower-case-header", "consumer-delivery", "other-device",
         "no-timestamp", "bad-timestamp", "bool-uptime", "huge", "push-delivery-subject"],
)
def test_jetstream_replies_and_odd_bodies_are_not_heartbeats(reply, headers, data, label):
    shaped = {None: _beat(), "other-device": _beat(device="db-02"),
              "no-timestamp": _beat(timestamp=...), "bad-timestamp": _beat(timestamp="now"),
              "bool-uptime": _beat(uptime_seconds=True)}
    body = shaped.get(data, data) if not isinstance(data, bytes) else data
    subject = SUBJECT
    if data == "stored-subject":  # a push delivery shows the stored message's subject
        subject, body = f"agents.{CODE}.telemetry.system", _beat()
    reason = not_a_heartbeat(subject, reply, headers, body)
    assert reason is not None and reason.split(":", 1)[0] == label, reason
