"""NATS subjects: validation, wildcard matching, and an index from subjects to rules.

A filter is dot-separated tokens; `*` matches exactly one token, `>` (last token only)
matches one or more. Wildcards must be whole tokens. `SubjectIndex` is a token trie with
`*` and `>` branches: looking a subject up costs O(tokens * wildcard branches), not
O(rules). It is immutable — build a new one and swap the reference to hot-reload.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


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
