"""The short form and the structured form are one language: a random condition tree written
both ways parses into rules that agree on random messages."""

from __future__ import annotations

import json

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from rule_router.evaluate import evaluate
from rule_router.parse import parse_rules

SUBJECT = "agents.web1.telemetry.system"
FIELDS = ["a", "b", "n.x", "arr", "arr[0].a", "@subject.1"]
BINARY = ["eq", "neq", "gt", "gte", "lt", "lte", "contains", "not_contains", "in", "not_in"]
SYMBOL = {"eq": "==", "neq": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<=",
          "contains": "contains", "not_contains": "not contains", "in": "in",
          "not_in": "not in"}
REGEXES = ["^a", "b$", "a|é", ".", "^$"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3),
                    st.floats(-3, 3, allow_nan=False, allow_infinity=False),
                    st.text(alphabet="abé\"'\\\n ", max_size=3))
values = st.one_of(scalars, st.lists(scalars, max_size=3))


@st.composite
def leaves(draw, depth):
    field = draw(st.sampled_from(FIELDS))
    op = draw(st.sampled_from([*BINARY, "exists", "not_exists", "regex", "any", "all", "none"]))
    if op in ("exists", "not_exists"):
        return ("leaf", field, op, None)
    if op == "regex":
        return ("leaf", field, op, draw(st.sampled_from(REGEXES)))
    if op in ("any", "all", "none"):
        if depth > 0 and draw(st.booleans()):
            return ("leaf", field, op, draw(trees(depth - 1)))
        return ("leaf", field, op, draw(scalars))
    return ("leaf", field, op, draw(values))


@st.composite
def trees(draw, depth=3):
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        return draw(leaves(depth))
    op = draw(st.sampled_from(["and", "or", "not"]))
    return ("group", op, draw(st.lists(trees(depth - 1), min_size=1, max_size=3)))


def literal(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    return "[" + ", ".join(literal(x) for x in v) + "]"


def to_expression(t) -> str:
    if t[0] == "group":
        _, op, items = t
        inner = (" and " if op == "not" else f" {op} ").join(to_expression(i) for i in items)
        return f"not ({inner})" if op == "not" else f"({inner})"
    _, field, op, value = t
    if op in ("exists", "not_exists"):
        return f"{field} {'exists' if op == 'exists' else 'not exists'}"
    if op == "regex":
        return f"{field} matches {json.dumps(value)}"
    if op in ("any", "all", "none"):
        if isinstance(value, tuple):
            return f"{field} {op} ({to_expression(value)})"
        return f"{field} {op} {literal(value)}"
    return f"{field} {SYMBOL[op]} {literal(value)}"


def to_structured(t) -> dict:
    if t[0] == "leaf":
        return {"operator": "and", "items": [_leaf(t)]}
    _, op, items = t
    group: dict = {"operator": op}
    leaves_ = [_leaf(i) for i in items if i[0] == "leaf"]
    groups = [to_structured(i) for i in items if i[0] == "group"]
    if leaves_:
        group["items"] = leaves_
    if groups:
        group["groups"] = groups
    return group


def _leaf(t) -> dict:
    _, field, op, value = t
    item: dict = {"field": "{" + field + "}", "operator": op}
    if op in ("any", "all", "none") and isinstance(value, tuple):
        item["conditions"] = to_structured(value)
    elif op not in ("exists", "not_exists"):
        item["value"] = value
    return item


def both_forms(tree):
    short = yaml.safe_dump({"subject": "agents.*.telemetry.system",
                            "match": to_expression(tree),
                            "actions": [{"publish": "alerts.out.short"}]}, allow_unicode=True)
    structured = yaml.safe_dump({"trigger": {"nats": {"subject": "agents.*.telemetry.system"}},
                                 "conditions": to_structured(tree),
                                 "action": {"nats": {"subject": "alerts.out.structured",
                                                     "passthrough": True}}},
                                allow_unicode=True)
    return parse_rules(short, "short")[0], parse_rules(structured, "structured")[0]


elements = st.one_of(scalars, st.fixed_dictionaries({}, optional={"a": values, "b": values}))
messages = st.fixed_dictionaries({}, optional={
    "a": values, "b": values,
    "n": st.one_of(scalars, st.fixed_dictionaries({}, optional={"x": values})),
    "arr": st.one_of(scalars, st.lists(elements, max_size=3)),
})


@settings(max_examples=300, deadline=None)
@given(trees(), st.lists(messages, min_size=1, max_size=5))
def test_short_and_structured_forms_agree(tree, msgs):
    short, structured = both_forms(tree)
    for msg in msgs:
        a = evaluate(short, SUBJECT, msg) is not None
        b = evaluate(structured, SUBJECT, msg) is not None
        assert a == b, (to_expression(tree), msg)


def test_a_known_tree_in_both_forms():
    tree = ("group", "and", [
        ("leaf", "a", "gt", 1),
        ("group", "not", [("leaf", "arr", "any", ("leaf", "a", "eq", "x"))]),
    ])
    assert to_expression(tree) == "(a > 1 and not (arr any (a == \"x\")))"
    short, structured = both_forms(tree)
    for msg, fires in [({"a": 2, "arr": [{"a": "y"}]}, True),
                       ({"a": 2, "arr": [{"a": "x"}]}, False),
                       ({"a": 2}, True), ({"a": 1}, False), ({}, False)]:
        assert (evaluate(short, SUBJECT, msg) is not None) is fires
        assert (evaluate(structured, SUBJECT, msg) is not None) is fires
