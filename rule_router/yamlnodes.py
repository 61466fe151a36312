"""YAML nodes with line numbers: compose text, read typed values, report the 1-based line.

`yaml.compose` keeps a `start_mark` on every node; these helpers read scalars, mappings
and durations from nodes and raise `RuleError(message, line)` naming the offending key or
value. Aliases/anchors are refused (they would let a small row expand into a huge tree).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from cairn_common.durations import DurationError, parse_seconds
from rule_router.errors import RuleError

_STR_TAG = "tag:yaml.org,2002:str"


def compose(text: str) -> Node:
    if not isinstance(text, str):
        raise RuleError("rules must be YAML text", None)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        raise RuleError(f"invalid YAML: {problem}", mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise RuleError(f"invalid YAML: {exc}", None) from None
    if root is None:
        raise RuleError("empty document: expected a rule or a list of rules", 1)
    no_aliases(root)
    if not isinstance(root, MappingNode | SequenceNode):
        raise RuleError("expected a rule (a mapping) or a list of rules", line(root))
    return root


def no_aliases(root: Node) -> None:
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            raise RuleError("YAML anchors and aliases are not supported", line(node))
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, MappingNode):
            for key, value in node.value:
                stack.extend((key, value))


def line(node: Node) -> int:
    return node.start_mark.line + 1


def mapping(node: Node, what: str,
            allowed: tuple[str, ...] | None) -> dict[str, tuple[Node, Node]]:
    """Key → (key node, value node); rejects non-mappings, duplicate keys and keys not in
    `allowed` (None admits any key)."""
    if not isinstance(node, MappingNode):
        raise RuleError(f"{what} must be a mapping", line(node))
    out: dict[str, tuple[Node, Node]] = {}
    for key, value in node.value:
        if not isinstance(key, ScalarNode) or key.tag != _STR_TAG:
            raise RuleError(f"{what}: keys must be strings", line(key))
        if key.value in out:
            raise RuleError(f"{what}: duplicate key {key.value!r}", line(key))
        if allowed is not None and key.value not in allowed:
            raise RuleError(f"unknown key {key.value!r} in {what} (allowed: "
                            f"{', '.join(allowed)})", line(key))
        out[key.value] = (key, value)
    return out


def string(node: Node, what: str, empty_ok: bool = False) -> str:
    if not isinstance(node, ScalarNode) or node.tag != _STR_TAG:
        raise RuleError(f"{what} must be a string", line(node))
    if not node.value and not empty_ok:
        raise RuleError(f"{what} must not be empty", line(node))
    return str(node.value)


def scalar(node: Node, what: str) -> Any:
    if not isinstance(node, ScalarNode):
        raise RuleError(f"{what} must be a single value", line(node))
    return literal(node)


def literal(node: Node) -> Any:
    """A YAML value as JSON-like data (lists become tuples; timestamps stay text)."""
    if isinstance(node, SequenceNode):
        return tuple(literal(n) for n in node.value)
    if isinstance(node, MappingNode):
        return {str(literal(k)): literal(v) for k, v in node.value}
    if node.tag in (_STR_TAG, "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:binary"):
        return str(node.value)
    return yaml.SafeLoader("").construct_object(node)


def number(node: Node, what: str, minimum: float = 0.0, integer: bool = False) -> float:
    value = scalar(node, what)
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or value < minimum:
        kind = "an integer" if integer else "a number"
        raise RuleError(f"{what} must be {kind} >= {minimum:g}", line(node))
    return value


def duration(node: Node, what: str) -> float:
    """A duration in the grammar every Cairn file shares (cairn_common.durations)."""
    try:
        return parse_seconds(scalar(node, what))
    except DurationError as exc:
        raise RuleError(f"{what} {exc}", line(node)) from None


def template_line(node: Node, text: str, offset: int) -> int:
    """The line of a template error: block scalars (| and >) count the lines before it."""
    if isinstance(node, ScalarNode) and node.style in ("|", ">"):
        return line(node) + 1 + text[:offset].count("\n")
    return line(node)
