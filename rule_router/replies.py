"""Messages the NATS server wrote as the answer to someone else's JetStream request.

Any client with JetStream API rights (a viewer reading history with direct gets, a service
user) may put any subject of its account as the reply of a request, and the server then
publishes its answer there: a direct-get result (a stored message — perhaps another
device's — with `Nats-Stream`, `Nats-Subject`, `Nats-Sequence`, `Nats-Time-Stamp`), a
status message (`Status: 404`), a PubAck (`{"stream": ..., "seq": ...}`) or an API
response (`{"type": "io.nats.jetstream.api.v1...."}`). Aimed at a rule's subject, that
answer would be evaluated as telemetry or an alert the requester could never have
published itself. So such a message is dropped before evaluation (counted, never acted on).

What nats-py shows of a message delivered by the router's durable pull consumer is the
stored message's own headers; the stream sequence and the rest live in the `$JS.ACK...`
reply (`msg.metadata`), and the consumer's status messages (404/408 from a fetch) never
reach the caller. So a real device's telemetry never has these headers and always passes;
`tests/security/test_router_replies.py` shows both on a live server. Pure: no I/O.

The server-only headers are `cairn_common.server_messages`' (shared with the agent and the
bridge). Its reply-subject test is not used here: the durable consumer's own deliveries
come with a `$JS.ACK.` reply, and a core message's reply is its requester's business.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from cairn_common.server_messages import server_header

_PUBACK_KEYS = frozenset(("stream", "seq", "domain", "duplicate"))
_PUBACK_MAX = 512  # bytes: a PubAck is a stream name, a number and two short fields
_API_RESPONSE = b'{"type":"io.nats.jetstream.api.v1.'


def server_answer(headers: Mapping[str, str] | None, data: bytes) -> str | None:
    """Why this message looks like the server's answer to a JetStream request, or None."""
    name = server_header(headers) if headers else None
    if name is not None:
        return f"header {name}"
    if data[:1] != b"{":
        return None
    if data.startswith(_API_RESPONSE):
        return "a JetStream API response"
    if len(data) <= _PUBACK_MAX and b'"seq"' in data and _is_puback(data):
        return "a JetStream PubAck"
    return None


def _is_puback(data: bytes) -> bool:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return False
    return (isinstance(doc, dict) and {"stream", "seq"} <= doc.keys() <= _PUBACK_KEYS
            and isinstance(doc["stream"], str) and isinstance(doc["seq"], int)
            and not isinstance(doc["seq"], bool))
