"""Condition trees compiled once into closures, so evaluating a rule costs a few calls
instead of a walk over the tree with type dispatch at every node.

A predicate is `test(ctx, root) -> bool`; `root` is MISSING for "the message" or an array
element inside any/all/none. The semantics are exactly those of `operators.py` (a
missing field makes everything false but `not_exists`; see `evaluate.py`); the
comparisons with a constant number, string, bool or null take a shortcut that agrees
with the operator table (tested against it property-wise).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from rule_router.model import MISSING, Condition, FieldRef, Group, Node, resolve_path
from rule_router.operators import ARRAY_OPERATORS, OPERATORS, equal
from rule_router.templates import Context, resolve

Predicate = Callable[[Context, Any], bool]
Getter = Callable[[Context, Any], Any]

_ORDERED = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}
_NUMBER = (int, float)


def compile_condition(node: Node) -> Predicate:
    if isinstance(node, Group):
        return _group(node)
    return _leaf(node)


def _group(node: Group) -> Predicate:
    tests = tuple(compile_condition(item) for item in node.items)

    def all_of(ctx: Context, root: Any) -> bool:
        for test in tests:
            if not test(ctx, root):
                return False
        return True

    def any_of(ctx: Context, root: Any) -> bool:
        for test in tests:
            if test(ctx, root):
                return True
        return False

    def none_of_all(ctx: Context, root: Any) -> bool:
        return not all_of(ctx, root)

    if node.operator == "and":
        return tests[0] if len(tests) == 1 else all_of
    if node.operator == "or":
        return tests[0] if len(tests) == 1 else any_of
    return none_of_all


def getter(ref: FieldRef) -> Getter:
    """Read a field (from `root`, else the message) or a variable; MISSING when absent."""
    if ref.var:
        return lambda ctx, root: resolve(ref, ctx, root)
    parts = ref.parts
    if len(parts) == 1 and isinstance(parts[0], str):
        key = parts[0]

        def one_key(ctx: Context, root: Any) -> Any:
            obj = ctx.message if root is MISSING else root
            return obj.get(key, MISSING) if isinstance(obj, dict) else MISSING
        return one_key
    return lambda ctx, root: resolve_path(ctx.message if root is MISSING else root, parts)


def _leaf(node: Condition) -> Predicate:
    get, op, expected = getter(node.field), node.operator, node.value
    if op in ARRAY_OPERATORS:
        return _array(op, get, expected)
    if op == "exists":
        return lambda ctx, root: get(ctx, root) is not MISSING
    if op == "not_exists":
        return lambda ctx, root: get(ctx, root) is MISSING
    if isinstance(expected, FieldRef):
        return _field_to_field(OPERATORS[op], get, getter(expected))
    return _constant(op, get, expected)


def _field_to_field(fn: Callable[[Any, Any], bool], get: Getter, other: Getter) -> Predicate:
    def compare(ctx: Context, root: Any) -> bool:
        actual = get(ctx, root)
        if actual is MISSING:
            return False
        expected = other(ctx, root)
        return expected is not MISSING and fn(actual, expected)
    return compare


def _constant(op: str, get: Getter, expected: Any) -> Predicate:
    """Comparison with a literal; the common shapes skip the generic operator call."""
    is_number = isinstance(expected, _NUMBER) and not isinstance(expected, bool)
    if op in _ORDERED and (is_number or isinstance(expected, str)):
        cmp, kinds = _ORDERED[op], _NUMBER if is_number else str

        def ordered(ctx: Context, root: Any) -> bool:
            actual = get(ctx, root)
            return (isinstance(actual, kinds) and actual.__class__ is not bool
                    and cmp(actual, expected))
        return ordered
    if op == "eq" and (is_number or isinstance(expected, str | bool) or expected is None):
        kinds = _NUMBER if is_number else type(expected)

        def same(ctx: Context, root: Any) -> bool:
            actual = get(ctx, root)
            return (isinstance(actual, kinds) and (actual.__class__ is bool) is
                    (expected.__class__ is bool) and actual == expected)
        return same
    fn = OPERATORS[op]

    def generic(ctx: Context, root: Any) -> bool:
        actual = get(ctx, root)
        return actual is not MISSING and fn(actual, expected)
    return generic


def _array(op: str, get: Getter, sub: Any) -> Predicate:
    if isinstance(sub, Condition | Group):
        inner = compile_condition(sub)

        def element_ok(ctx: Context, element: Any) -> bool:
            return inner(ctx, element)
    else:
        def element_ok(ctx: Context, element: Any) -> bool:
            return equal(element, sub)

    def test(ctx: Context, root: Any) -> bool:
        actual = get(ctx, root)
        if not isinstance(actual, list):
            return False
        if op == "any":
            return any(element_ok(ctx, e) for e in actual)
        if op == "all":
            return all(element_ok(ctx, e) for e in actual)
        return not any(element_ok(ctx, e) for e in actual)
    return test
