"""One duration grammar for every file a person writes: agent.yaml, desired config, rules.

A duration is a number of seconds (`30`, `1.5`) or text with units (`"90s"`, `"5m"`,
`"1h30m"`, `"500ms"`, `"1d"`). Callers wrap `DurationError` in their own error type, which
adds the file, key and line; the reason reads the same everywhere.
"""

from __future__ import annotations

import math
import re
from typing import Any

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MINUTE, HOUR, DAY = UNITS["m"], UNITS["h"], UNITS["d"]
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_WITH_UNITS = re.compile(rf"(?:{_PART.pattern}\s*)+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
SHAPE = 'a positive duration like 30, "90s", "5m" or "1h30m"'


class DurationError(ValueError):
    """Why a value is not a duration, without naming where it came from."""


def parse_seconds(value: Any) -> float:
    """Seconds, finite and above zero, or `DurationError` saying what is wrong."""
    try:
        seconds = _seconds(value)
    except OverflowError:  # an integer too large for a float
        seconds = math.inf
    if seconds is None:
        raise DurationError(f"must be {SHAPE}, got {value!r}")
    if not math.isfinite(seconds):
        raise DurationError(f"must be a finite duration, got {value!r}")
    if seconds <= 0:
        raise DurationError(f"must be a positive duration (greater than zero), got {value!r}")
    return seconds


def _seconds(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if _NUMBER.fullmatch(text):
            return float(text)
        if text and _WITH_UNITS.fullmatch(text):
            return sum(float(n) * UNITS[u] for n, u in _PART.findall(text))
    return None


def human(seconds: float) -> str:
    """A duration for messages: "0.01 s", "60 s", "10 m", "24 h", "7 d"."""
    for unit, size in (("d", DAY), ("h", HOUR), ("m", MINUTE)):
        if seconds >= 2 * size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"
