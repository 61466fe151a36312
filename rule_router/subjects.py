"""NATS subjects: validation, wildcard matching, and an index from subjects to rules.

A filter is dot-separated tokens; `*` matches exactly one token, `>` (last token only)
matches one or more. Wildcards must be whole tokens. `SubjectIndex` is a token trie with
`*` and `>` branches: looking a subject up costs O(tokens * wildcard branches), not
O(rules). It is immutable — build a new one and swap the reference to hot-reload.

Rules may listen only within `agents.>` and `alerts.>` and publish only under `alerts.`:
the router's NATS identity may subscribe to nothing else (apart from its own inbox) and
publish nowhere else, so a rule outside them could never work, and a rule on `>` or
`_INBOX.>` or `$JS.API.>` would be reading other identities' traffic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

LISTEN_WITHIN = ("agents", "alerts")  # a trigger filter lies within `<token>.>`
PUBLISH_PREFIX = "alerts."


def filter_error(subject: str) -> str | None:
    """Why `subject` is not a valid subscription filter, or None when it is."""
    return _check(subject, wildcards=True)


def subject_error(subject: str) -> str | None:
    """Why `subject` is not a valid concrete (publishable) subject, or None when it is."""
    return _check(subject, wildcards=False)


def _check(subject: str, wildcards: bool) -> str | None:
    if not isinstance(subject, str) or not subject:
        return "subject is empty"
    if any(ch.isspace() for ch in subject):
        return f"subject {subject!r} contains whitespace"
    tokens = subject.split(".")
    for i, token in enumerate(tokens):
        if not token:
            return f"subject {subject!r} has an empty token"
        if token in ("*", ">"):
            if not wildcards:
                return f"subject {subject!r} contains the wildcard {token!r}"
            if token == ">" and i != len(tokens) - 1:
                return f"subject {subject!r}: '>' must be the last token"
        elif "*" in token or ">" in token:
            return f"subject {subject!r}: a wildcard must be a whole token ({token!r})"
    return None


def namespace_error(filter_: str) -> str | None:
    """Why a (valid) trigger filter lies outside the subjects rules may listen on, or None."""
    tokens = filter_.split(".")
    if len(tokens) >= 2 and tokens[0] in LISTEN_WITHIN:
        return None
    within = " or ".join(f"{t}.>" for t in LISTEN_WITHIN)
    return f"subject {filter_!r} is outside what rules may listen on ({within})"


def may_match(filter_: str, pattern: list[str | None]) -> bool:
    """Can some subject that `filter_` matches be written as `pattern`: literal text, with
    each None standing for any text (dots included, or nothing)? Used to spot a rule that
    publishes where it listens. Exact, by walking the filter's character automaton."""
    tokens = filter_.split(".")
    alphabet = {c for t in tokens for c in t if t not in ("*", ">")} | {".", "\x00"}
    states = {(0, 0)}
    for part in pattern:
        if part is None:
            states = _closure(tokens, states, alphabet)
        else:
            for ch in part:
                states = {n for s in states for n in _step(tokens, s, ch)}
        if not states:
            return False
    return any(_accepts(tokens, s) for s in states)


def _step(tokens: list[str], state: tuple[int, int], ch: str) -> list[tuple[int, int]]:
    """States after `ch`: (token index, characters into it; 1 means "some" for * and >)."""
    i, k = state
    token, last = tokens[i], i == len(tokens) - 1
    if token in ("*", ">"):
        if ch != ".":
            return [(i, 1)]
        if k and not last:
            return [(i + 1, 0)]
        return [(i, 0)] if k and token == ">" else []
    if k < len(token):
        return [(i, k + 1)] if ch == token[k] else []
    return [(i + 1, 0)] if ch == "." and not last else []


def _closure(tokens: list[str], states: set[tuple[int, int]],
             alphabet: set[str]) -> set[tuple[int, int]]:
    seen, todo = set(states), list(states)
    while todo:
        state = todo.pop()
        for nxt in (n for ch in alphabet for n in _step(tokens, state, ch)):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _accepts(tokens: list[str], state: tuple[int, int]) -> bool:
    i, k = state
    token = tokens[i]
    return i == len(tokens) - 1 and (k == len(token) if token not in ("*", ">") else k == 1)


def has_wildcards(subject: str) -> bool:
    return any(t in ("*", ">") for t in subject.split("."))


def subject_matches(filter_: str, subject: str) -> bool:
    """True when the concrete `subject` matches the filter `filter_`."""
    ftoks, stoks = filter_.split("."), subject.split(".")
    for i, ft in enumerate(ftoks):
        if ft == ">":
            return len(stoks) > i
        if i >= len(stoks) or (ft != "*" and ft != stoks[i]):
            return False
    return len(ftoks) == len(stoks)


class _Node:
    __slots__ = ("end", "gt", "literal", "star")

    def __init__(self) -> None:
        self.literal: dict[str, _Node] = {}
        self.star: _Node | None = None
        self.gt: list[int] = []
        self.end: list[int] = []


class SubjectIndex(Generic[T]):
    """Maps many items' subject filters to the items matching a concrete subject.

    `match(subject)` returns the matching items in the order they were given."""

    __slots__ = ("_items", "_root")

    def __init__(self, items: Iterable[T] = (),
                 key: Callable[[T], str] = lambda item: item.subject) -> None:  # type: ignore[attr-defined]
        self._items: tuple[T, ...] = tuple(items)
        self._root = _Node()
        for pos, item in enumerate(self._items):
            node = self._root
            for token in key(item).split("."):
                if token == ">":
                    node.gt.append(pos)
                    break
                if token == "*":
                    node.star = node.star or _Node()
                    node = node.star
                else:
                    node = node.literal.setdefault(token, _Node())
            else:
                node.end.append(pos)

    @property
    def items(self) -> tuple[T, ...]:
        return self._items

    def __len__(self) -> int:
        return len(self._items)

    def match(self, subject: str) -> list[T]:
        found: list[int] = []
        frontier = [self._root]
        for token in subject.split("."):
            nxt: list[_Node] = []
            for node in frontier:
                found.extend(node.gt)
                child = node.literal.get(token)
                if child is not None:
                    nxt.append(child)
                if node.star is not None:
                    nxt.append(node.star)
            frontier = nxt
            if not frontier:
                break
        else:
            for node in frontier:
                found.extend(node.end)
        found.sort()
        return [self._items[i] for i in found]

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(self, "_root"):
            raise AttributeError("SubjectIndex is immutable; build a new one")
        object.__setattr__(self, name, value)
