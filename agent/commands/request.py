"""Checking a command's JSON request: exact keys, exact types, clear messages."""

from __future__ import annotations

from typing import Any

from agent.errors import CommandError

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", list: "a list",
               dict: "an object", bool: "true or false"}


def check(request: dict[str, Any], required: dict[str, type | tuple[type, ...]],
          optional: dict[str, type | tuple[type, ...]] | None = None) -> None:
    """Every required key present with its type; no key the command does not know."""
    optional = optional or {}
    unknown = sorted(set(request) - set(required) - set(optional))
    if unknown:
        allowed = ", ".join(sorted({*required, *optional})) or "none"
        raise CommandError(f"unknown field {unknown[0]!r} (allowed: {allowed})")
    for key in required:
        if key not in request:
            raise CommandError(f"missing field {key!r}")
    for key, kind in {**required, **optional}.items():
        if key in request and not _is(request[key], kind):
            raise CommandError(f"field {key!r} must be {_name(kind)}, "
                               f"got {type(request[key]).__name__}")


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False  # JSON true is not an integer here
    return isinstance(value, kinds)


def _name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
