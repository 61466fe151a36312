"""The publish action: hand a rendered message to NATS.

`nc` is duck-typed: anything with `async publish(subject, payload, headers=...)` — a
nats-py client, or (what the tenant runtime passes) its `alerts.AlertPublisher`, which
stores `alerts.` subjects in the tenant's ALERTS stream and raises when the PubAck does
not come. This module does not import nats: any failure of the publish is an ActionError.
"""

from __future__ import annotations

from typing import Any

from rule_router.errors import ActionError
from rule_router.model import PublishOut


async def run(out: PublishOut, nc: Any) -> None:
    """Publish `out`; any client failure becomes ActionError (the caller dead-letters)."""
    headers = dict(out.headers) if out.headers else None
    try:
        await nc.publish(out.subject, out.payload, headers=headers)
    except Exception as exc:
        raise ActionError(f"publish to {out.subject!r} failed: {exc or type(exc).__name__}") \
            from exc
