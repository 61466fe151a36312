"""What each command's payload may hold (SPEC §6), checked before anything is sent, and how
long the bridge waits for each command's reply.

The shapes live in cairn_common/command_payloads.json, which PocketBase's hook
(pb_hooks/commands.pb.js) reads too: a bad row is refused in the Admin UI at once, with the
very words the bridge would write on it (the bridge still checks rows made before the
hook, or while PocketBase ran without it). Both say every problem, not only the first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "cairn_common" / "command_payloads.json"
SHAPES: dict[str, dict[str, dict[str, Any]]] = json.loads(
    SCHEMA_PATH.read_text(encoding="utf-8"))["commands"]
REPLY_MARGIN = 5.0  # seconds on top of a command's own time, for the round trip


def json_type(value: Any) -> str:
    """JSON's name for a decoded value (the words PocketBase's hook uses too)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _quote(name: str) -> str:
    """'name', escaped as the hook's quote() does (repr would switch quote styles)."""
    return "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fits(value: Any, kind: str) -> bool:
    if kind == "integer":
        return json_type(value) == "number" and float(value).is_integer()
    return json_type(value) == kind


def problems(command: str, payload: Any) -> list[str]:
    """Every reason this payload cannot be sent ([] when it can)."""
    if command not in SHAPES:
        return [f"unknown command {_quote(command)} (known: {', '.join(sorted(SHAPES))})"]
    if payload in (None, ""):
        payload = {}
    if not isinstance(payload, dict):
        return [f"payload must be a JSON object, got {json_type(payload)}"]
    fields = SHAPES[command]
    found = [f"{command}: unknown field {_quote(key)}"
             for key in sorted(set(payload) - set(fields))]
    for key, rule in fields.items():
        if key not in payload:
            if rule.get("required"):
                found.append(f"{command}: missing field {_quote(key)}")
            continue
        value = payload[key]
        if not _fits(value, rule["type"]):
            found.append(f"{command}: field {_quote(key)} has the wrong type ({json_type(value)}, "
                         f"not {rule['type']})")
            continue
        found.extend(_range(command, key, value, rule))
    return found


def _range(command: str, key: str, value: Any, rule: dict[str, Any]) -> list[str]:
    unit = f" {rule['unit']}" if rule.get("unit") else ""
    if "items" in rule and not all(_fits(v, rule["items"]) for v in value):
        return [f"{command}: {key} must be a list of {rule['items']}s"]
    if "enum" in rule and value not in rule["enum"]:
        return [f"{command}: {key} must be one of {', '.join(rule['enum'])}"]
    if "above" in rule and not (rule["above"] < value <= rule["max"]):
        return [f"{command}: {key} must be above {rule['above']} and at most "
                f"{rule['max']}{unit}"]
    if "min" in rule and not (rule["min"] <= value <= rule["max"]):
        return [f"{command}: {key} must be between {rule['min']} and {rule['max']}{unit}"]
    return []


def problem(command: str, payload: Any) -> str | None:
    """Why this payload cannot be sent, every reason in one line, or None."""
    found = problems(command, payload)
    return "; ".join(found) if found else None


def reply_timeout(command: str, payload: dict[str, Any]) -> float:
    if command == "exec":
        return float(payload.get("timeout") or 60) + REPLY_MARGIN
    if command == "service":
        return 60 + REPLY_MARGIN
    if command in ("logs", "rotate_creds"):
        return 15 + REPLY_MARGIN
    return 10.0
