"""Messages the NATS server made itself, told apart from what a client sent.

NATS never checks a publisher's reply subject, and the JetStream server publishes its API
answers (a PubAck, a direct-get result, a `404` status) and consumer deliveries into
whatever subject it was given, with the account's own client. So anyone with JetStream
rights can have the server inject messages into any subject of a tenant (docs/security.md).
Receivers use this module to recognise and drop them: agent commands, bridge presence,
rule-router intake.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Reply prefixes of server-made messages: consumer deliveries and acks ($JS.ACK.…), the
# system account, KV. A requester's reply is its inbox.
SERVER_REPLY_PREFIXES = ("$JS.", "$SYS.", "$KV.")
# Headers only the server sets: status messages, direct gets, batch gets.
SERVER_HEADERS = frozenset({"status", "nats-stream", "nats-subject", "nats-sequence",
                            "nats-time-stamp", "nats-last-sequence", "nats-num-pending"})


def server_reply(reply: str | None) -> str | None:
    """Why `reply` shows a server-made message (a delivery or ack), or None."""
    if reply and reply.startswith(SERVER_REPLY_PREFIXES):
        return f"reply subject {reply[:24]!r} is the server's, not a requester's inbox"
    return None


def server_header(headers: Mapping[Any, str] | None) -> str | None:
    """The server-only header a message carries, or None. nats-py puts an inline status
    (`NATS/1.0 404`) into `headers["Status"]` and may key headers by its `Header` enum."""
    for key in headers or {}:
        name = str(getattr(key, "value", key))
        if name.lower() in SERVER_HEADERS:
            return name
    return None
