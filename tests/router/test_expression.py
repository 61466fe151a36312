"""The `match` grammar: precedence, literals, paths, operators, errors with columns, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rule_router.errors import ExpressionError
from rule_router.evaluate import matches
from rule_router.expression import parse_expression
from rule_router.model import Condition, FieldRef, Group, parse_ref
from rule_router.operators import compile_regex
from rule_router.templates import Context


def C(path, op, value=None):
    return Condition(parse_ref(path), op, value)


def G(op, *items):
    return Group(op, items)


a, b, c = C("a", "eq", 1), C("b", "eq", 2), C("c", "eq", 3)

GRAMMAR = [
    ("a == 1", a),
    ("a == 1 or b == 2 and c == 3", G("or", a, G("and", b, c))),
    ("a == 1 and b == 2 or c == 3", G("or", G("and", a, b), c)),
    ("(a == 1 or b == 2) and c == 3", G("and", G("or", a, b), c)),
    ("a == 1 and b == 2 and c == 3", G("and", a, b, c)),
    ("not a == 1", G("not", a)),
    ("not a == 1 and b == 2", G("and", G("not", a), b)),
    ("not (a == 1 and b == 2)", G("not", G("and", a, b))),
    ("not not a == 1", G("not", G("not", a))),
    ("((a == 1))", a),
    ("a != 1", C("a", "neq", 1)),
    ("a > 1", C("a", "gt", 1)),
    ("a >= 1", C("a", "gte", 1)),
    ("a < 1", C("a", "lt", 1)),
    ("a <= 1", C("a", "lte", 1)),
    ("a>1", C("a", "gt", 1)),
    ("a == -1", C("a", "eq", -1)),
    ("a == 1.5", C("a", "eq", 1.5)),
    ("a == -2.5e3", C("a", "eq", -2500.0)),
    ("a == 'x'", C("a", "eq", "x")),
    ('a == "x"', C("a", "eq", "x")),
    (r"a == 'it\'s'", C("a", "eq", "it's")),
    (r'a == "q\"\\\n\t\u00e9"', C("a", "eq", 'q"\\\n\té')),
    ("a == true", C("a", "eq", True)),
    ("a == false", C("a", "eq", False)),
    ("a == null", C("a", "eq", None)),
    ("a.b.c == 1", C("a.b.c", "eq", 1)),
    ("disks[0].free_percent < 10", C("disks[0].free_percent", "lt", 10)),
    ("disks[-1].free_percent < 10", C("disks[-1].free_percent", "lt", 10)),
    ("labels['app.name'] == 'x'", Condition(FieldRef("labels['app.name']",
                                                     ("labels", "app.name")), "eq", "x")),
    ("items.0 == 1", C("items.0", "eq", 1)),
    ("@subject.1 == 'web1'", C("@subject.1", "eq", "web1")),
    ("@time.hour >= 8", C("@time.hour", "gte", 8)),
    ("a contains 'x'", C("a", "contains", "x")),
    ("a not contains 'x'", C("a", "not_contains", "x")),
    ("a in [1, 'b', true, null]", C("a", "in", (1, "b", True, None))),
    ("a in []", C("a", "in", ())),
    ("a not in [1]", C("a", "not_in", (1,))),
    ("a in b", C("a", "in", parse_ref("b"))),
    ("a > b.c", C("a", "gt", parse_ref("b.c"))),
    ("a exists", C("a", "exists")),
    ("a not exists", C("a", "not_exists")),
    ("a matches '^w.b$'", C("a", "regex", compile_regex("^w.b$"))),
    ("xs any 3", C("xs", "any", 3)),
    ("xs all (v > 1 and w exists)", C("xs", "all", G("and", C("v", "gt", 1), C("w", "exists")))),
    ("xs none (v > 1)", C("xs", "none", C("v", "gt", 1))),
    ("90 < cpu", C("cpu", "gt", 90)),
    ("90 >= cpu", C("cpu", "lte", 90)),
    ("'x' in tags", C("tags", "contains", "x")),
    ("'x' not in tags", C("tags", "not_contains", "x")),
    # operator words are only keywords where an operator is expected
    ("in == 1 and contains > 2", G("and", C("in", "eq", 1), C("contains", "gt", 2))),
    ("cpu_percent > 90 and source != 'builtin'",
     G("and", C("cpu_percent", "gt", 90), C("source", "neq", "builtin"))),
]


@pytest.mark.parametrize(("text", "tree"), GRAMMAR)
def test_grammar(text, tree):
    assert parse_expression(text) == tree


ERRORS = [
    # text, column, fragment of the message
    ("", 1, "empty"),
    ("   ", 1, "empty"),
    ("a", 2, "expected a comparison operator"),
    ("a >", 4, "expected a field or a value"),
    ("a = 1", 3, "use '=='"),
    ("a == 1 && b == 2", 8, "use 'and'"),
    ("a == 1 || b == 2", 8, "use 'or'"),
    ("!a", 1, "use '!=' or 'not'"),
    ("(a == 1", 8, "expected ')'"),
    ("a == 1)", 7, "unexpected"),
    ("a == 1 b", 8, "unexpected 'b'"),
    ("a == 'x", 6, "unterminated string"),
    (r"a == '\q'", 7, "unknown escape"),
    ("a matches '('", 11, "invalid regular expression"),
    ("a matches b", 11, "quoted regular expression"),
    ("a not matches 'x'", 7, "after 'not'"),
    ("1 == 2", 6, "a field on one side"),
    ("1 exists", 1, "must be a field"),
    ("a in [b]", 7, "only literal values"),
    ("a in [1, 2", 11, "expected ',' or ']'"),
    ("a == 1e999", 6, "out of range"),
    ("a..b == 1", 3, "after '.'"),
    ("a[x] == 1", 3, "index or a quoted key"),
    ("not", 4, "expected a field or a value"),
    ("not == 1", 5, "expected a field or a value"),
    ("a == 1 and", 11, "expected a field or a value"),
    ("a € 1", 3, "unexpected character"),
    ("xs any b", 8, "literal or a parenthesised condition"),
    ("(" * 200 + "a == 1" + ")" * 200, 65, "nested too deeply"),
    ("not " * 200 + "a == 1", 257, "nested too deeply"),
]


@pytest.mark.parametrize(("text", "column", "fragment"), ERRORS)
def test_errors_carry_a_column(text, column, fragment):
    with pytest.raises(ExpressionError) as info:
        parse_expression(text)
    assert fragment in info.value.message
    assert info.value.column == column
    assert f"column {column}" in str(info.value)


@pytest.mark.parametrize(("text", "message", "result"), [
    ("a == 1 or b == 2 and c == 3", {"a": 1}, True),
    ("a == 1 or b == 2 and c == 3", {"b": 2}, False),
    ("(a == 1 or b == 2) and c == 3", {"b": 2, "c": 3}, True),
    ("not a > 1", {}, True),  # not of a false comparison on a missing field
    ("a <= 1", {}, False),
    ("not (a > 1)", {"a": 5}, False),
    ("disks any (free_percent < 10)", {"disks": [{"free_percent": 5}]}, True),
    ("disks[1].free_percent < 10", {"disks": [{"free_percent": 5}]}, False),
    ("@subject.1 == 'web1' and @subject.-1 == 'system'", {}, True),
    ("tags contains 'prod' and 'db' in tags", {"tags": ["prod", "db"]}, True),
    ("@nope == 1 or @time.nope == 1 or @subject.x == 1", {}, False),  # parse.py rejects these
])
def test_evaluation(text, message, result):
    ctx = Context(message, "agents.web1.telemetry.system")
    assert matches(parse_expression(text), ctx) is result


_WORDS = ["a", "b.c", "x[0]", "and", "or", "not", "in", "contains", "exists", "matches",
          "any", "all", "none", "==", "!=", ">", ">=", "<", "<=", "(", ")", "[", "]", ",",
          "1", "-2.5", "'s'", '"t"', "true", "null", "@subject.1", "@nope", "@subject.x",
          "@time.hour", "'", "\\", "="]


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=60),
                 st.lists(st.sampled_from(_WORDS), max_size=14).map(" ".join)))
def test_parser_raises_only_expression_error(text):
    try:
        node = parse_expression(text)
    except ExpressionError as exc:
        assert 1 <= exc.column <= len(text) + 1
        return
    # whatever parses can also be evaluated without error
    matches(node, Context({"a": 1, "b": {"c": [1]}, "x": [2]}, "agents.d.telemetry.system"))
