"""One duration grammar: agent.yaml, desired config and rules read a duration alike."""

from __future__ import annotations

import json

import pytest

from agent import config as agent_config
from agent.errors import ConfigError
from cairn_common.durations import DurationError, human, parse_seconds
from rule_router import yamlnodes
from rule_router.errors import RuleError


@pytest.mark.parametrize(("value", "seconds"), [
    (30, 30.0), (1.5, 1.5), ("30", 30.0), ("90s", 90.0), ("90 s", 90.0), ("5m", 300.0),
    ("1h30m", 5400.0), ("500ms", 0.5), ("1d", 86400.0), (" 2h ", 7200.0), ("1m 5s", 65.0),
])
def test_every_reader_accepts_the_same_durations(value, seconds):
    assert parse_seconds(value) == seconds
    assert agent_config.duration(value, "intervals.heartbeat", "agent.yaml") == seconds
    assert yamlnodes.duration(_node(value), "throttle") == seconds


@pytest.mark.parametrize(("value", "reason"), [
    ("never", "must be a positive duration like 30"), ("", "got ''"),
    ("5 minutes", "got '5 minutes'"), ("1 2s", "got '1 2s'"), ("s", "got 's'"),
    (True, "got True"), (None, "got None"), ([5], "got [5]"),
    (float("nan"), "must be a finite duration"), (float("inf"), "must be a finite duration"),
    (10**400, "must be a finite duration"), (0, "(greater than zero), got 0"),
    (-5, "(greater than zero), got -5"), ("0s", "greater than zero"),
])
def test_bad_durations_get_one_reason_everywhere(value, reason):
    with pytest.raises(DurationError, match=None) as shared:
        parse_seconds(value)
    assert reason in str(shared.value)
    with pytest.raises(ConfigError) as agent:
        agent_config.duration(value, "commands.timeout", "agent.yaml")
    assert str(agent.value) == f"agent.yaml: commands.timeout {shared.value}"
    if isinstance(value, str):
        with pytest.raises(RuleError) as rule:
            yamlnodes.duration(_node(value), "throttle")
        assert rule.value.row_message == f"line 1: throttle {shared.value}"


def _node(value: object):
    """The value as a rule file would hold it (strings quoted)."""
    return yamlnodes.compose(f"throttle: {json.dumps(value)}\n").value[0][1]


def test_human_names_whole_units_only():
    assert [human(s) for s in (0.01, 60, 600, 86400, 7 * 86400, 90)] == [
        "0.01 s", "60 s", "10 m", "24 h", "7 d", "90 s"]
