"""Subject filters: validation, matching, and the index agreeing with brute force."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rule_router.subjects import SubjectIndex, filter_error, subject_error, subject_matches


@pytest.mark.parametrize(("subject", "ok"), [
    ("agents.*.telemetry.>", True), ("a", True), (">", True), ("*", True), ("a.*.*", True),
    ("", False), ("a..b", False), (".a", False), ("a.", False), ("a.>.b", False),
    ("a b", False), ("a\tb", False), ("a*.b", False), ("a.b>", False)])
def test_filter_validation(subject, ok):
    assert (filter_error(subject) is None) is ok


@pytest.mark.parametrize(("subject", "ok"), [
    ("alerts.web1.high-cpu", True), ("alerts.*", False), ("alerts.>", False), ("", False),
    ("alerts..x", False), ("alerts x", False)])
def test_concrete_subject_validation(subject, ok):
    assert (subject_error(subject) is None) is ok


@pytest.mark.parametrize(("filter_", "subject", "result"), [
    ("a.b", "a.b", True), ("a.b", "a.c", False), ("a.b", "a.b.c", False),
    ("a.*", "a.b", True), ("a.*", "a", False), ("a.*", "a.b.c", False),
    ("a.>", "a.b", True), ("a.>", "a.b.c", True), ("a.>", "a", False), (">", "a", True),
    ("*.b.>", "x.b.y.z", True), ("agents.*.telemetry.>", "agents.d1.telemetry.system", True),
    ("agents.*.telemetry.>", "agents.d1.heartbeat", False)])
def test_subject_matches(filter_, subject, result):
    assert subject_matches(filter_, subject) is result


@dataclass(frozen=True)
class Item:
    subject: str
    n: int


TOKENS = ["a", "b", "c"]
filters = st.lists(st.sampled_from([*TOKENS, "*"]), min_size=1, max_size=4).flatmap(
    lambda toks: st.sampled_from([".".join(toks), ".".join([*toks, ">"])]))
subjects = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=5).map(".".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(filters, max_size=40), st.lists(subjects, min_size=1, max_size=20))
def test_index_agrees_with_brute_force(filter_list, subject_list):
    items = [Item(f, i) for i, f in enumerate(filter_list)]
    index = SubjectIndex(items)
    for subject in subject_list:
        expected = [it for it in items if subject_matches(it.subject, subject)]
        assert index.match(subject) == expected  # same items, in the given order


def test_index_is_immutable_and_keeps_duplicates_in_order():
    items = [Item("a.>", 0), Item("a.b", 1), Item("a.>", 2), Item("*.b", 3)]
    index = SubjectIndex(items)
    assert [i.n for i in index.match("a.b")] == [0, 1, 2, 3]
    assert len(index) == 4 and index.items == tuple(items)
    with pytest.raises(AttributeError):
        index._root = None


def test_index_cost_does_not_grow_with_unrelated_rules():
    items = [Item(f"agents.d{i}.telemetry.system", i) for i in range(5000)]
    items.append(Item("agents.*.telemetry.>", 5000))
    index = SubjectIndex(items)
    assert [i.n for i in index.match("agents.d42.telemetry.system")] == [42, 5000]
    assert index.match("other.subject") == []
