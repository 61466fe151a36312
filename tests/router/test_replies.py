"""What the server writes as the answer to a JetStream request (direct gets, status
messages, PubAcks, API responses) is told apart from telemetry and alerts, which pass."""

from __future__ import annotations

import pytest

from rule_router.replies import server_answer


@pytest.mark.parametrize(("headers", "data", "why"), [
    ({"Nats-Stream": "TELEMETRY", "Nats-Subject": "agents.d1.telemetry.system",
      "Nats-Sequence": "4", "Nats-Time-Stamp": "2024-01-01T00:00:00Z"}, b'{"cpu": 99}',
     "header Nats-Stream"),
    ({"nats-subject": "x"}, b"{}", "header nats-subject"),
    ({"Nats-Sequence": "1"}, b"{}", "header Nats-Sequence"),
    ({"Nats-Time-Stamp": "t"}, b"{}", "header Nats-Time-Stamp"),
    ({"Nats-Num-Pending": "3", "Nats-Last-Sequence": "2"}, b"{}", "header Nats-Num-Pending"),
    ({"Status": "404", "Description": "Message Not Found"}, b"", "header Status"),
    (None, b'{"stream":"TELEMETRY","seq":12}', "a JetStream PubAck"),
    (None, b'{"stream":"TELEMETRY","seq":12,"duplicate":true}', "a JetStream PubAck"),
    (None, b'{"stream": "T", "domain": "hub", "seq": 1}', "a JetStream PubAck"),
    (None, b'{"type":"io.nats.jetstream.api.v1.stream_msg_get_response","message":{}}',
     "a JetStream API response"),
])
def test_server_answers_are_recognised(headers, data, why):
    assert server_answer(headers, data) == why


@pytest.mark.parametrize(("headers", "data"), [
    (None, b'{"cpu_percent": 95}'),
    ({"Cairn-Hops": "1", "Cairn-Budget": "9", "Nats-Msg-Id": "abc"}, b"{}"),
    (None, b'{"stream": "TELEMETRY", "seq": 12, "cpu": 1}'),  # more than a PubAck
    (None, b'{"stream": "TELEMETRY"}'),
    (None, b'{"stream": "TELEMETRY", "seq": "12"}'),
    (None, b'{"stream": "TELEMETRY", "seq": true}'),
    (None, b'{"seq": 1, "stream": 2}'),
    (None, b'[{"stream": "T", "seq": 1}]'),
    (None, b"not json"),
    (None, b""),
    (None, b'{"type": "alert", "seq": 3}'),
])
def test_telemetry_and_alerts_pass(headers, data):
    assert server_answer(headers, data) is None
