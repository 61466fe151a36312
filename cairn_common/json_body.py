"""A request body that must be one JSON object, read the same way by every receiver (the
agent's commands, the bridge's device requests): size first, then JSON, then the type."""

from __future__ import annotations

import json
from typing import Any


class BodyError(ValueError):
    """The body is too large, not JSON, or not an object (the message says which)."""


def parse_object(data: bytes, max_bytes: int) -> dict[str, Any]:
    """The body as a dict; an empty body is `{}`."""
    if len(data) > max_bytes:
        raise BodyError(f"request too large ({len(data)} bytes, max {max_bytes})")
    if not data.strip():
        return {}
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BodyError(f"request is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BodyError(f"request must be a JSON object, got {type(doc).__name__}")
    return doc
