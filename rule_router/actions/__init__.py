"""Actions: the `ACTIONS` table (kind → coroutine) and the dead-letter document.

    publish  `publish.run(out: PublishOut, nc)`            — nc: a client or AlertPublisher
    webhook  `webhook.run(out: WebhookOut, client, progress=..., every=...)`
                                                           — httpx with tenacity retries;
                                                             `progress` keeps the message alive

Each `run` takes a rendered action (pure data from `evaluate`) and the resource it needs.
A webhook that still fails after its attempts returns a failed `WebhookResult`; the
caller then publishes `deadletter_payload(...)` to `DEADLETTER_SUBJECT`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from rule_router.actions import publish, webhook
from rule_router.model import Firing, Out, PublishOut, WebhookResult

ACTIONS = {
    "publish": publish.run,
    "webhook": webhook.run,
}

DEADLETTER_SUBJECT = "alerts.deadletter"
ORIGINAL_MAX = 16 * 1024  # bytes of the original message a dead letter carries at most


def describe(action: Out) -> dict[str, Any]:
    """A loggable description of a rendered action (secrets from ${ENV} masked in URLs)."""
    if isinstance(action, PublishOut):
        return {"type": "publish", "index": action.index, "subject": action.subject}
    return {"type": "webhook", "index": action.index, "method": action.method,
            "url": action.safe_url or action.url}


def deadletter_payload(firing: Firing, action: Out, error: str | WebhookResult | BaseException,
                       original_payload: bytes | None = None,
                       now: datetime | None = None) -> bytes:
    """The JSON document for `alerts.deadletter`: rule, subject, action, error, attempts,
    the original message (decoded when it is JSON, else as text) and a timestamp. An
    original over ORIGINAL_MAX bytes is cut to its first ORIGINAL_MAX bytes (as text) and
    marked `original_truncated: true` with its `original_size`: a letter embedding a
    ~1 MiB message would exceed max_payload and the ALERTS stream's max_msg_size."""
    original = firing.payload if original_payload is None else original_payload
    truncated = len(original) > ORIGINAL_MAX
    message: Any
    if truncated:  # an excerpt, as text: the letter must fit max_payload and the stream
        message = original[:ORIGINAL_MAX].decode("utf-8", errors="replace")
    else:
        try:
            message = json.loads(original)
        except (ValueError, RecursionError):
            message = original.decode("utf-8", errors="replace")
    attempts, status = 1, None
    if isinstance(error, WebhookResult):
        attempts, status, text = error.attempts, error.status, error.error or "failed"
    else:
        text = str(error) or type(error).__name__
    stamp = (now or datetime.now(UTC)).astimezone(UTC)
    doc = {
        "rule": firing.rule.name,
        "rule_id": firing.rule.id,
        "subject": firing.subject,
        "action": describe(action),
        "error": text,
        "attempts": attempts,
        "status": status,
        "original": message,
        **({"original_truncated": True, "original_size": len(original)} if truncated else {}),
        "timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", errors="backslashreplace")
