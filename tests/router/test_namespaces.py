"""Rules listen only within agents.> and alerts.> and publish only under alerts.: the
router's NATS identity may do no more, and a wider rule would read others' traffic."""

from __future__ import annotations

import pytest

from rule_router.errors import RuleError
from rule_router.parse import parse_rules
from rule_router.subjects import namespace_error


@pytest.mark.parametrize("filter_", [">", "*", "*.>", "_INBOX.>", "_INBOX_svc_cairn-bridge.>",
                                     "$JS.API.>", "$JS.API.CONSUMER.INFO.TELEMETRY.x",
                                     "$SYS.>", "$KV.>", "agents", "alerts", "*.telemetry",
                                     "agentsx.>", "metrics.x"])
def test_filters_outside_the_namespaces_are_refused(filter_):
    assert namespace_error(filter_) is not None
    text = f"name: wide\nsubject: '{filter_}'\nactions: [{{publish: alerts.x}}]\n"
    with pytest.raises(RuleError) as info:
        parse_rules(text, "row", {})
    assert info.value.row_message == (
        f"line 2: subject {filter_!r} is outside what rules may listen on "
        "(agents.> or alerts.>)")


@pytest.mark.parametrize("filter_", ["agents.>", "alerts.>", "agents.*.telemetry.>",
                                     "agents.web1.heartbeat", "alerts.*.high-cpu",
                                     "alerts.deadletter"])
def test_filters_inside_are_fine(filter_):
    assert namespace_error(filter_) is None
    (rule,) = parse_rules(f"subject: '{filter_}'\nactions: [{{publish: alerts.x}}]\n", "r", {})
    assert rule.subject == filter_


def test_the_structured_trigger_is_checked_too():
    with pytest.raises(RuleError, match="outside what rules may listen on") as info:
        parse_rules("trigger:\n  nats:\n    subject: '_INBOX.>'\naction: {nats: "
                    "{subject: alerts.x, passthrough: true}}\n", "row", {})
    assert info.value.line == 3


@pytest.mark.parametrize("subject", ["agents.web1.cmd.exec", "x.y", "{target}",
                                     "{a}.alerts.x", "alertsx.y", "_INBOX.abc", "$JS.API.x",
                                     "agents.{@subject.1}.cmd.ping"])
def test_publish_subjects_must_start_with_alerts(subject):
    for action in (f"publish: '{subject}'", f"nats: {{subject: '{subject}'}}"):
        text = f"subject: agents.*.heartbeat\nactions:\n  - {action}\n"
        with pytest.raises(RuleError) as info:
            parse_rules(text, "row", {})
        assert info.value.line == 3
        assert info.value.message.endswith(
            "must start with 'alerts.': rules publish only under alerts.>")


@pytest.mark.parametrize("subject", ["alerts.x", "alerts.{@subject.1}.high-cpu",
                                     "alerts.{host}", "alerts.deadletter"])
def test_publish_subjects_under_alerts_are_fine(subject):
    (rule,) = parse_rules(f"subject: agents.*.heartbeat\nactions:\n  - publish: '{subject}'\n",
                          "row", {})
    assert rule.actions[0].subject.text == subject
