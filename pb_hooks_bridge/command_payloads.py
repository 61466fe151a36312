"""What each command's payload may hold (SPEC §6), checked before anything is sent, and how
long the bridge waits for each command's reply."""

from __future__ import annotations

from typing import Any

NO_FIELDS: dict[str, tuple[type, ...]] = {}
SHAPES: dict[str, tuple[dict[str, tuple[type, ...]], dict[str, tuple[type, ...]]]] = {
    # command: (required fields, optional fields)
    "ping": (NO_FIELDS, NO_FIELDS),
    "health": (NO_FIELDS, NO_FIELDS),
    "inventory": (NO_FIELDS, NO_FIELDS),
    "rotate_creds": (NO_FIELDS, NO_FIELDS),
    "exec": ({"command": (str,)}, {"args": (list,), "timeout": (int, float)}),
    "service": ({"action": (str,), "service_name": (str,)}, NO_FIELDS),
    "logs": ({"log_path": (str,)}, {"lines": (int,)}),
}
SERVICE_ACTIONS = {"start", "stop", "restart", "status"}
REPLY_MARGIN = 5.0  # seconds on top of a command's own time, for the round trip


def problem(command: str, payload: Any) -> str | None:
    """Why this payload cannot be sent, or None."""
    if command not in SHAPES:
        return f"unknown command {command!r} (known: {', '.join(sorted(SHAPES))})"
    if payload in (None, ""):
        payload = {}
    if not isinstance(payload, dict):
        return f"payload must be a JSON object, got {type(payload).__name__}"
    required, optional = SHAPES[command]
    unknown = sorted(set(payload) - set(required) - set(optional))
    if unknown:
        return f"{command}: unknown field {unknown[0]!r}"
    for key in required:
        if key not in payload:
            return f"{command}: missing field {key!r}"
    for key, kinds in {**required, **optional}.items():
        value = payload.get(key)
        if key in payload and (isinstance(value, bool) or not isinstance(value, kinds)):
            return f"{command}: field {key!r} has the wrong type ({type(value).__name__})"
    if command == "exec":
        if "args" in payload and not all(isinstance(a, str) for a in payload["args"]):
            return "exec: args must be a list of strings"
        if "timeout" in payload and not 0 < payload["timeout"] <= 3600:
            return "exec: timeout must be between 0 and 3600 seconds"
    if command == "service" and payload["action"] not in SERVICE_ACTIONS:
        return f"service: action must be one of {', '.join(sorted(SERVICE_ACTIONS))}"
    if command == "logs" and "lines" in payload and not 1 <= payload["lines"] <= 10_000:
        return "logs: lines must be between 1 and 10000"
    return None


def reply_timeout(command: str, payload: dict[str, Any]) -> float:
    if command == "exec":
        return float(payload.get("timeout") or 60) + REPLY_MARGIN
    if command == "service":
        return 60 + REPLY_MARGIN
    if command in ("logs", "rotate_creds"):
        return 15 + REPLY_MARGIN
    return 10.0
