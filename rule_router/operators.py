"""Condition operators: the `OPERATORS` table, name → `fn(actual, expected) -> bool`.

Type rules (shared by the short and the structured form):
- numbers compare with numbers (int and float; a bool is NOT a number), strings with
  strings (by code point, so RFC 3339 timestamps order correctly), bools with bools;
- a comparison between incompatible types is false — for `neq` too (`"5" != 5` is false);
- `null` is comparable with everything for eq/neq: `x == null` holds only for null,
  `x != null` for any present non-null value;
- arrays and objects are equal when their elements are equal under these rules;
- a missing field makes every operator false except `not_exists` (the evaluator applies
  that rule before calling the table; `actual` is never MISSING here except for exists).

The array operators `any`, `all`, `none` are evaluated in `evaluate.py` (they need the
condition tree); their element test for a plain value is `eq`. For an empty array `any`
is false, `all` and `none` are true.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import regex as regex_module

from rule_router.errors import RegexTimeout
from rule_router.model import MISSING

Operator = Callable[[Any, Any], bool]


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_array(v: Any) -> bool:
    return isinstance(v, list | tuple)


def comparable(a: Any, b: Any) -> bool:
    """True when `a` and `b` are of one type class (number, string, bool, array, object)."""
    if _is_num(a):
        return _is_num(b)
    if _is_array(a):
        return _is_array(b)
    return type(a) is type(b) and isinstance(a, str | bool | dict | type(None))


def equal(a: Any, b: Any) -> bool:
    """Typed deep equality: `1 == 1.0`, but `1 != True` and `"1" != 1`."""
    if not comparable(a, b):
        return False
    if _is_array(a):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return bool(a == b)


def eq(actual: Any, expected: Any) -> bool:
    return equal(actual, expected)


def neq(actual: Any, expected: Any) -> bool:
    if actual is None or expected is None:
        return (actual is None) != (expected is None)
    return comparable(actual, expected) and not equal(actual, expected)


def _ordered(actual: Any, expected: Any) -> bool:
    return (_is_num(actual) and _is_num(expected)) or (
        isinstance(actual, str) and isinstance(expected, str))


def gt(actual: Any, expected: Any) -> bool:
    return _ordered(actual, expected) and actual > expected


def gte(actual: Any, expected: Any) -> bool:
    return _ordered(actual, expected) and actual >= expected


def lt(actual: Any, expected: Any) -> bool:
    return _ordered(actual, expected) and actual < expected


def lte(actual: Any, expected: Any) -> bool:
    return _ordered(actual, expected) and actual <= expected


def _contains(container: Any, item: Any) -> bool | None:
    """True/False when the question makes sense; None when the types do not fit."""
    if isinstance(container, str):
        return item in container if isinstance(item, str) else None
    if _is_array(container):
        return any(equal(element, item) for element in container)
    return None


def contains(actual: Any, expected: Any) -> bool:
    """A string holds a substring, or an array holds an element equal to `expected`."""
    return _contains(actual, expected) is True


def not_contains(actual: Any, expected: Any) -> bool:
    return _contains(actual, expected) is False


def in_(actual: Any, expected: Any) -> bool:
    """The mirror of contains: `a in b` ⇔ `b contains a`."""
    return _contains(expected, actual) is True


def not_in(actual: Any, expected: Any) -> bool:
    return _contains(expected, actual) is False


def exists(actual: Any, expected: Any = None) -> bool:
    """The path is present (a JSON null counts as present)."""
    return actual is not MISSING


def not_exists(actual: Any, expected: Any = None) -> bool:
    return actual is MISSING


# A pattern with catastrophic backtracking must not stall every tenant's router: each
# search runs under a time limit (the `regex` module can stop a search; `re` cannot).
REGEX_TIMEOUT = 0.02  # seconds per search
MAX_PATTERN = 1000  # characters


def compile_regex(pattern: str) -> Any:
    """Compile a rule's pattern (Python `re` syntax); ValueError says what is wrong."""
    if len(pattern) > MAX_PATTERN:
        raise ValueError(f"pattern is {len(pattern)} characters long (limit {MAX_PATTERN})")
    try:
        return regex_module.compile(pattern)
    except (regex_module.error, OverflowError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


def regex(actual: Any, expected: Any) -> bool:
    """Search anywhere in the string (anchor with ^…$); strings only. Raises RegexTimeout
    past REGEX_TIMEOUT."""
    if not isinstance(actual, str):
        return False
    pattern = expected if isinstance(expected, regex_module.Pattern) else compile_regex(
        getattr(expected, "pattern", str(expected)))
    try:
        return pattern.search(actual, timeout=REGEX_TIMEOUT) is not None
    except TimeoutError:
        raise RegexTimeout(f"regular expression {pattern.pattern!r} took longer than "
                           f"{REGEX_TIMEOUT * 1000:.0f} ms on a {len(actual)}-character "
                           "value") from None


OPERATORS: dict[str, Operator] = {
    "eq": eq,
    "neq": neq,
    "gt": gt,
    "gte": gte,
    "lt": lt,
    "lte": lte,
    "contains": contains,
    "not_contains": not_contains,
    "in": in_,
    "not_in": not_in,
    "exists": exists,
    "not_exists": not_exists,
    "regex": regex,
}

# Operators over an array whose expected value is a nested condition or an element value.
ARRAY_OPERATORS = frozenset({"any", "all", "none"})
# Operators that take no value.
UNARY_OPERATORS = frozenset({"exists", "not_exists"})
ALL_OPERATORS = frozenset(OPERATORS) | ARRAY_OPERATORS
