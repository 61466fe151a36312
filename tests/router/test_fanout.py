"""Fan-out bounds without a server: the caps at validation, the output budget a message
carries (and splits among what it causes), the per-tenant token bucket, and how a tenant
runtime's guards count, log and report what they drop."""

from __future__ import annotations

import pytest

from rule_router import metrics
from rule_router.errors import RuleError
from rule_router.fanout import (
    BUDGET_HEADER,
    MAX_ACTIONS,
    MAX_OUTPUTS,
    MAX_RULES,
    PUBLISH_BURST,
    PUBLISH_RATE,
    Allowance,
    PublishBudget,
    fanout_warning,
    received_budget,
    stamp,
    throttle_warning,
)
from rule_router.guards import Guards
from rule_router.model import Firing
from rule_router.parse import parse_rules


def test_the_constants():
    assert (MAX_ACTIONS, MAX_RULES, MAX_OUTPUTS) == (10, 100, 100)
    assert (PUBLISH_RATE, PUBLISH_BURST, BUDGET_HEADER) == (1000.0, 2000, "Cairn-Budget")


def _actions(n: int) -> str:
    return "subject: alerts.in\nactions:\n" + "".join(
        f"  - publish: alerts.out.{i}\n" for i in range(n))


def test_a_rule_has_at_most_max_actions():
    with pytest.raises(RuleError) as info:
        parse_rules(_actions(MAX_ACTIONS + 1), "row", {})
    assert info.value.row_message == (
        f"line {3 + MAX_ACTIONS}: too many actions: at most {MAX_ACTIONS} per rule "
        f"(got {MAX_ACTIONS + 1})")
    (rule,) = parse_rules(_actions(MAX_ACTIONS), "row", {})  # the cap itself is fine
    assert len(rule.actions) == MAX_ACTIONS


def _rules(n: int) -> str:
    return "".join(f"- subject: alerts.in.{i}\n  actions: [{{publish: alerts.out}}]\n"
                   for i in range(n))


def test_a_row_has_at_most_max_rules():
    with pytest.raises(RuleError) as info:
        parse_rules(_rules(MAX_RULES + 1), "row", {})
    assert info.value.row_message == (
        f"line {2 * MAX_RULES + 1}: too many rules: at most {MAX_RULES} per row "
        f"(got {MAX_RULES + 1})")
    assert len(parse_rules(_rules(MAX_RULES), "row", {})) == MAX_RULES


@pytest.mark.parametrize("name", ["Cairn-Budget", "cairn-budget", "CAIRN-BUDGET"])
def test_a_rule_cannot_set_its_own_budget(name):
    text = f"subject: alerts.in\nactions:\n  - publish: alerts.out\n    headers: {{{name}: '9'}}\n"
    with pytest.raises(RuleError) as info:
        parse_rules(text, "row", {})
    assert info.value.row_message == "line 4: actions[0].headers: Cairn-Budget is set by the router"
    assert parse_rules(text.replace(name, "X-Budget"), "row", {})  # other names are fine


@pytest.mark.parametrize(("headers", "budget"), [
    (None, MAX_OUTPUTS), ({}, MAX_OUTPUTS), ({"Cairn-Budget": "7"}, 7),
    ({"cairn-budget": "0"}, 0), ({"Cairn-Budget": "100000"}, MAX_OUTPUTS),  # never more
    ({"Cairn-Budget": "-1"}, MAX_OUTPUTS), ({"Cairn-Budget": "x"}, MAX_OUTPUTS),
    ({"Cairn-Budget": "9" * 5000}, MAX_OUTPUTS), ({"Cairn-Hops": "2"}, MAX_OUTPUTS),
])
def test_reading_the_budget(headers, budget):
    assert received_budget(headers) == budget


def test_stamping_replaces_any_spelling():
    assert stamp({"X": "y", "cairn-budget": "99", "CAIRN-HOPS": "0"}, 2, 5) == {
        "X": "y", "Cairn-Hops": "2", "Cairn-Budget": "5"}
    assert stamp(None, 1, 0) == {"Cairn-Hops": "1", "Cairn-Budget": "0"}


def _tree(budget: int, width: int, depth: int) -> int:
    """Messages caused by one message with `budget`, through rules publishing `width`
    messages each, `depth` hops deep: what the router does, without the router."""
    if depth == 0:
        return 0
    allowance, sent = Allowance.split(budget, width), 0
    while sent < width and allowance.take():
        sent += 1
    return sent + sent * _tree(allowance.child, width, depth - 1)


@pytest.mark.parametrize("width", [1, 2, 3, 7, 10, 50, 100, 101, 1000])
def test_one_message_never_causes_more_than_its_budget(width):
    for depth in (1, 2, 3, 10):
        assert _tree(MAX_OUTPUTS, width, depth) <= MAX_OUTPUTS
    assert _tree(MAX_OUTPUTS, 10, 3) == 100  # the amplification of the review: 1110 before
    assert _tree(MAX_OUTPUTS, 1, 3) == 3  # positive control: a plain chain is untouched
    assert _tree(MAX_OUTPUTS, 10, 1) == 10


def test_the_bucket_allows_a_burst_then_the_rate():
    now = [0.0]
    bucket = PublishBudget(clock=lambda: now[0])
    assert sum(bucket.take() for _ in range(PUBLISH_BURST + 50)) == PUBLISH_BURST
    now[0] += 0.1  # a tenth of a second refills a tenth of the rate
    assert sum(bucket.take() for _ in range(1000)) == int(PUBLISH_RATE * 0.1)
    now[0] += 3600  # never more than the burst saved up
    assert sum(bucket.take() for _ in range(PUBLISH_BURST * 2)) == PUBLISH_BURST


def _firing(rule_source: str = "row") -> Firing:
    (rule,) = parse_rules("subject: alerts.in\nactions: [{publish: alerts.out}]\n",
                          rule_source, {})
    return Firing(rule, "alerts.in", ())


def test_guards_count_and_report_drops_once_a_minute_per_rule():
    warnings: list[tuple[str, str]] = []
    guards = Guards("t1", lambda rule, message: warnings.append((rule.source, message)))
    now = [0.0]
    guards.budget = PublishBudget(rate=10, burst=2, clock=lambda: now[0])
    one, other = _firing("one"), _firing("other")
    before = (metrics.FANOUT_DROPPED._value.get(), metrics.PUBLISH_THROTTLED._value.get())
    allowance = Allowance.split(3, 5)
    assert [guards.may_publish(one, allowance) for _ in range(5)] == [
        True, True, False, False, False]  # the bucket: two, then nothing
    assert guards.dropped["throttled"] == 1 and guards.dropped["fanout"] == 2
    assert guards.may_publish(other, Allowance.split(1, 1)) is False  # the bucket again
    assert warnings == [("one", throttle_warning()), ("one", fanout_warning("alerts.in")),
                        ("other", throttle_warning())]
    assert (metrics.FANOUT_DROPPED._value.get(), metrics.PUBLISH_THROTTLED._value.get()) == (
        before[0] + 2, before[1] + 2)
    now[0] += 1.0  # control: the bucket refills, and a budget with room publishes
    assert guards.may_publish(one, Allowance.split(MAX_OUTPUTS, 1)) is True
    assert len(warnings) == 3
