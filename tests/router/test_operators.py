"""Every operator, table-driven: matches, type mismatches, null, missing fields."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rule_router.evaluate import matches
from rule_router.model import MISSING, Condition, parse_ref
from rule_router.operators import ALL_OPERATORS, OPERATORS, compile_regex
from rule_router.templates import Context

CASES = [
    # operator, actual, expected, result
    ("eq", 5, 5, True),
    ("eq", 5, 5.0, True),
    ("eq", 5, 6, False),
    ("eq", "a", "a", True),
    ("eq", "5", 5, False),  # incompatible types: false
    ("eq", True, 1, False),  # a bool is not a number
    ("eq", 1, True, False),
    ("eq", True, True, True),
    ("eq", None, None, True),
    ("eq", 0, None, False),
    ("eq", [1, "a"], (1, "a"), True),
    ("eq", [1, True], [1, 1], False),
    ("eq", {"a": [1]}, {"a": [1.0]}, True),
    ("eq", {"a": 1}, {"a": 1, "b": 2}, False),
    ("neq", 5, 6, True),
    ("neq", 5, 5, False),
    ("neq", "a", "b", True),
    ("neq", "5", 5, False),  # incompatible types: false for neq as well
    ("neq", True, 1, False),
    ("neq", 5, None, True),  # null compares with everything for eq/neq
    ("neq", None, 5, True),
    ("neq", None, None, False),
    ("gt", 91, 90, True),
    ("gt", 90, 90, False),
    ("gt", 90.5, 90, True),
    ("gt", "b", "a", True),
    ("gt", "91", 90, False),
    ("gt", True, 0, False),
    ("gt", None, 0, False),
    ("gt", [2], [1], False),
    ("gte", 90, 90, True),
    ("gte", 89.9, 90, False),
    ("gte", "2024-01-02T00:00:00Z", "2024-01-01T00:00:00Z", True),
    ("lt", 1, 2, True),
    ("lt", 2, 2, False),
    ("lt", "a", 1, False),
    ("lte", 2, 2, True),
    ("lte", 3, 2, False),
    ("lte", False, True, False),
    ("contains", "hello world", "lo w", True),
    ("contains", "hello", "x", False),
    ("contains", ["a", "b"], "b", True),
    ("contains", [1, 2], 2.0, True),
    ("contains", [1, 2], True, False),
    ("contains", [[1], [2]], [2], True),
    ("contains", "123", 1, False),
    ("contains", 123, "1", False),
    ("contains", {"a": 1}, "a", False),
    ("not_contains", "hello", "x", True),
    ("not_contains", "hello", "ell", False),
    ("not_contains", ["a"], "b", True),
    ("not_contains", ["a"], "a", False),
    ("not_contains", 5, "a", False),  # not a container: false, not true
    ("in", "b", ["a", "b"], True),
    ("in", "c", ["a", "b"], False),
    ("in", 2, [1, 2.0], True),
    ("in", "ell", "hello", True),
    ("in", 1, "1", False),
    ("in", "a", 5, False),
    ("not_in", "c", ["a", "b"], True),
    ("not_in", "a", ["a", "b"], False),
    ("not_in", 1, "abc", False),
    ("not_in", "z", "abc", True),
    ("exists", 0, None, True),
    ("exists", None, None, True),  # a JSON null is present
    ("exists", MISSING, None, False),
    ("not_exists", MISSING, None, True),
    ("not_exists", None, None, False),
    ("regex", "web-01", compile_regex(r"^web-\d+$"), True),
    ("regex", "xweb-01", compile_regex(r"web"), True),  # search, not fullmatch
    ("regex", "db-01", compile_regex(r"^web"), False),
    ("regex", 5, compile_regex(r"5"), False),
    ("regex", "abc", "b", True),  # an uncompiled pattern works too
]


@pytest.mark.parametrize(("op", "actual", "expected", "result"), CASES)
def test_operator_table(op, actual, expected, result):
    assert OPERATORS[op](actual, expected) is result


def test_every_operator_is_in_the_table():
    assert set(OPERATORS) | {"any", "all", "none"} == ALL_OPERATORS
    assert {op for op, *_ in CASES} == set(OPERATORS)


def _eval(op, message, value=None, path="x"):
    return matches(Condition(parse_ref(path), op, value), Context(message, "s.t"))


@pytest.mark.parametrize("op", sorted(set(OPERATORS) - {"not_exists"}))
def test_missing_field_is_false_for_every_operator_but_not_exists(op):
    value = compile_regex("a") if op == "regex" else ["a"] if op in ("in", "not_in") else "a"
    assert _eval(op, {"y": 1}, value) is False
    assert _eval("not_exists", {"y": 1}) is True


@pytest.mark.parametrize("op", ["any", "all", "none"])
def test_array_operators_on_missing_or_non_array_are_false(op):
    assert _eval(op, {}, 1) is False
    assert _eval(op, {"x": "abc"}, "a") is False
    assert _eval(op, {"x": {"a": 1}}, 1) is False


ARRAY_CASES = [
    # op, array, value-or-condition, result
    ("any", [1, 2, 3], 2, True),
    ("any", [1, 2, 3], 4, False),
    ("any", [], 1, False),
    ("all", [2, 2.0], 2, True),
    ("all", [2, 3], 2, False),
    ("all", [], 2, True),
    ("none", [1, 3], 2, True),
    ("none", [1, 2], 2, False),
    ("none", [], 2, True),
    ("any", [True], 1, False),  # element compare uses the typed eq
]


@pytest.mark.parametrize(("op", "array", "value", "result"), ARRAY_CASES)
def test_array_operators_with_a_value(op, array, value, result):
    assert _eval(op, {"x": array}, value) is result


def test_array_operators_with_a_nested_condition():
    low = Condition(parse_ref("free_percent"), "lt", 10)
    disks = {"x": [{"free_percent": 50}, {"free_percent": 5}, {"mount": "/"}]}
    assert _eval("any", disks, low) is True
    assert _eval("all", disks, low) is False
    assert _eval("none", disks, low) is False
    assert _eval("none", {"x": [{"free_percent": 50}, 7, None]}, low) is True
    # elements are the root of the nested paths; variables still see the message context
    sub = Condition(parse_ref("@subject.0"), "eq", "s")
    assert _eval("all", {"x": [1, 2]}, sub) is True


def test_comparing_with_another_field():
    ctx = Context({"used": 9, "limit": 8, "name": "a"}, "s")
    assert matches(Condition(parse_ref("used"), "gt", parse_ref("limit")), ctx)
    assert not matches(Condition(parse_ref("used"), "gt", parse_ref("nope")), ctx)
    assert not matches(Condition(parse_ref("used"), "neq", parse_ref("nope")), ctx)
    assert not matches(Condition(parse_ref("used"), "eq", parse_ref("name")), ctx)


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5),
                     st.floats(-5, 5, allow_nan=False), st.sampled_from(["", "a", "b", "5"]))
_VALUES = st.one_of(_SCALARS, st.lists(_SCALARS, max_size=3))


@settings(max_examples=600, deadline=None)
@given(op=st.sampled_from(sorted(set(OPERATORS) - {"regex"})), actual=_VALUES,
       expected=_VALUES, path=st.sampled_from(["x", "a.x", "a[0]"]))
def test_compiled_conditions_agree_with_the_operator_table(op, actual, expected, path):
    """Rules run compiled (predicates.py, with shortcuts for literal comparisons); they
    must decide exactly as the operator table does, for any types on either side."""
    message = {"x": actual, "a": {"x": actual}} if path != "a[0]" else {"a": [actual]}
    if op in ("in", "not_in") and not isinstance(expected, list | str):
        expected = [expected]
    want = OPERATORS[op](actual, tuple(expected) if isinstance(expected, list) else expected)
    value = tuple(expected) if isinstance(expected, list) else expected
    assert _eval(op, message, value, path) is want
    assert _eval(op, {"y": actual}, value, path) is (op == "not_exists")
