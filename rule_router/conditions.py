"""The structured condition form → the shared condition tree.

    conditions:
      operator: and | or | not      # default and; `not` negates the AND of everything below
      items:  [{field: "{path}", operator: gt, value: 90}, ...]
      groups: [{operator, items, groups}, ...]

`field` is a path or `@variable`, with or without braces. `value` is a literal; a string
that is exactly one placeholder (`"{other.field}"`) compares with that field instead. The
array operators any/all/none take `value` (each element compared with eq) or a nested
`conditions` group evaluated with each element as the root. exists/not_exists take no
value; regex takes a pattern string, compiled here.
"""

from __future__ import annotations

import re
from typing import Any

from yaml.nodes import Node, SequenceNode

from rule_router.errors import RuleError, TemplateSyntaxError
from rule_router.model import Condition, FieldRef, Group, parse_ref
from rule_router.model import Node as CondNode
from rule_router.operators import (
    ALL_OPERATORS,
    ARRAY_OPERATORS,
    UNARY_OPERATORS,
    compile_regex,
)
from rule_router.templates import check_variable
from rule_router.yamlnodes import line, literal, mapping, string

MAX_GROUP_DEPTH = 32


def check_variables(node: CondNode, subject: str, at: int) -> None:
    """Every `@variable` in a tree is known and fits the subject filter."""
    refs: list[FieldRef] = []
    stack: list[Any] = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, Group):
            stack.extend(n.items)
        elif isinstance(n, Condition):
            refs.append(n.field)
            stack.append(n.value)
        elif isinstance(n, FieldRef):
            refs.append(n)
    for ref in refs:
        if ref.var:
            try:
                check_variable(ref, subject)
            except TemplateSyntaxError as exc:
                raise RuleError(exc.message, at) from None


def group(node: Node, what: str, subject: str, depth: int) -> Group:
    """A structured group: {operator: and|or|not, items: [...], groups: [...]}.
    `not` negates the AND of all its items and groups."""
    if depth > MAX_GROUP_DEPTH:
        raise RuleError(f"{what}: groups nested too deeply", line(node))
    m = mapping(node, what, ("operator", "items", "groups"))
    op = "and"
    if "operator" in m:
        op = string(m["operator"][1], f"{what}.operator")
        if op not in ("and", "or", "not"):
            raise RuleError(f"{what}.operator must be and, or or not (got {op!r})",
                            line(m["operator"][1]))
    items: list[CondNode] = []
    for key, parse in (("items", _leaf), ("groups", group)):
        if key in m:
            seq = m[key][1]
            if not isinstance(seq, SequenceNode):
                raise RuleError(f"{what}.{key} must be a list", line(seq))
            for i, child in enumerate(seq.value):
                items.append(parse(child, f"{what}.{key}[{i}]", subject, depth + 1))
    if not items:
        raise RuleError(f"{what} needs 'items' or 'groups'", line(node))
    return Group(op, tuple(items))


def _ref(node: Node, what: str, subject: str) -> FieldRef:
    text = string(node, what)
    inner = text[1:-1] if text.startswith("{") and text.endswith("}") else text
    try:
        ref = parse_ref(inner)
        if ref.var:
            check_variable(ref, subject)
    except TemplateSyntaxError as exc:
        raise RuleError(f"{what}: {exc.message}", line(node)) from None
    return ref


def _leaf(node: Node, what: str, subject: str, depth: int) -> Condition:
    m = mapping(node, what, ("field", "operator", "value", "conditions"))
    for key in ("field", "operator"):
        if key not in m:
            raise RuleError(f"{what} needs '{key}'", line(node))
    field = _ref(m["field"][1], f"{what}.field", subject)
    op_node = m["operator"][1]
    op = string(op_node, f"{what}.operator")
    if op not in ALL_OPERATORS:
        raise RuleError(f"{what}: unknown operator {op!r} (known: "
                        f"{', '.join(sorted(ALL_OPERATORS))})", line(op_node))
    if "conditions" in m and op not in ARRAY_OPERATORS:
        raise RuleError(f"{what}: 'conditions' is only for any, all and none",
                        line(m["conditions"][0]))
    if op in UNARY_OPERATORS:
        if "value" in m:
            raise RuleError(f"{what}: {op} takes no value", line(m["value"][0]))
        return Condition(field, op)
    if op in ARRAY_OPERATORS:
        if ("value" in m) == ("conditions" in m):
            raise RuleError(f"{what}: {op} needs either 'value' or 'conditions'", line(node))
        if "conditions" in m:
            sub = group(m["conditions"][1], f"{what}.conditions", subject, depth + 1)
            return Condition(field, op, sub)
        return Condition(field, op, literal(m["value"][1]))
    if "value" not in m:
        raise RuleError(f"{what}: {op} needs a 'value'", line(node))
    value_node = m["value"][1]
    if op == "regex":
        pattern = string(value_node, f"{what}.value", empty_ok=True)
        try:
            return Condition(field, op, compile_regex(pattern))
        except ValueError as exc:
            raise RuleError(f"{what}: invalid regular expression: {exc}",
                            line(value_node)) from None
    value = literal(value_node)
    if isinstance(value, str) and re.fullmatch(r"\{@?[A-Za-z_][^{}]*\}", value):
        value = _ref(value_node, f"{what}.value", subject)
    return Condition(field, op, value)
