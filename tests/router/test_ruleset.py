"""Rule sets (which subjects the router subscribes to) and the rules-directory source."""

from __future__ import annotations

import os
import time

from rule_router.parse import parse_rules
from rule_router.ruleset import MAX_EXACT, RuleSet
from rule_router.sources import DirRules


def _set(subjects: list[str]) -> RuleSet:
    text = "\n".join(f'- subject: "{s}"\n  actions:\n    - publish: "alerts.x"' for s in subjects)
    return RuleSet.build({"row": parse_rules(text)})


def test_telemetry_only_filters_need_no_core_subscription():
    rules = _set(["agents.*.telemetry.system", "agents.*.telemetry.>", "agents.*.heartbeat"])
    assert rules.core_filters() == {"agents.*.heartbeat"}


def test_many_filters_fold_into_one_subscription_per_first_token():
    subjects = [f"alerts.s{i}" for i in range(MAX_EXACT + 5)] + ["agents.*.heartbeat"]
    # never wider than the subjects rules may listen on (the router may subscribe to no more)
    assert _set(subjects).core_filters() == {"alerts.>", "agents.>"}


def test_the_index_still_picks_the_exact_rules():
    rules = _set([f"alerts.s{i}" for i in range(100)])
    assert [r.subject for r in rules.index.match("alerts.s7")] == ["alerts.s7"]
    assert rules.index.match("alerts.other") == []


def test_rules_dir_reloads_changed_files_and_keeps_a_suspended_file_out_until_it_changes(
        tmp_path):
    path = tmp_path / "cpu.yaml"
    path.write_text("subject: alerts.b\nactions: [{publish: alerts.x}]\n")
    (tmp_path / "broken.yaml").write_text("subject: [\n")
    files = DirRules(tmp_path)
    assert files.reload() is True
    assert list(files.good) == [str(path)]  # the broken file is logged, not loaded
    assert files.reload() is False  # nothing changed
    assert files.suspend("nope.yaml", "x") is False
    assert files.suspend("cpu.yaml", "regex ran out of time") is True
    assert files.good == {}
    assert files.reload() is False  # still out: the file has not changed
    path.write_text("subject: alerts.c\nactions: [{publish: alerts.x}]\n")
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert files.reload() is True
    assert [r.subject for r in files.good[str(path)]] == ["alerts.c"]
