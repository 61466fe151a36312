"""Which subjects the router subscribes to for a rule set."""

from __future__ import annotations

from rule_router.parse import parse_rules
from rule_router.ruleset import MAX_EXACT, RuleSet


def _set(subjects: list[str]) -> RuleSet:
    text = "\n".join(f'- subject: "{s}"\n  actions:\n    - publish: "alerts.x"' for s in subjects)
    return RuleSet.build({"row": parse_rules(text)})


def test_telemetry_only_filters_need_no_core_subscription():
    rules = _set(["agents.*.telemetry.system", "agents.*.telemetry.>", "agents.*.heartbeat"])
    assert rules.core_filters() == {"agents.*.heartbeat"}


def test_many_filters_fold_into_one_subscription_per_first_token():
    subjects = [f"metrics.s{i}" for i in range(MAX_EXACT + 5)] + ["agents.*.heartbeat",
                                                                  "*.anything"]
    assert _set(subjects).core_filters() == {"metrics.>", "agents.>", ">"}


def test_the_index_still_picks_the_exact_rules():
    rules = _set([f"metrics.s{i}" for i in range(100)])
    assert [r.subject for r in rules.index.match("metrics.s7")] == ["metrics.s7"]
    assert rules.index.match("metrics.other") == []
