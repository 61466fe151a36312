"""Rule parsing: both forms, the overview's example, defaults, and errors with their line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rule_router
from rule_router.environment import RuleEnv
from rule_router.errors import RuleError
from rule_router.evaluate import evaluate
from rule_router.model import DEFAULT_SUBJECT, PublishAction, WebhookAction
from rule_router.parse import parse_rules, validate

ENV = {"ALERT_TOKEN": "t0k"}
OVERVIEW = (  # verbatim from architecture-overview.md, trailing space after `action:` included
    "# PocketBase rule\n"
    '- match: "cpu_percent > 90"\n'
    "  action: \n"
    '    - publish: "alerts.high-cpu"\n'
    '    - webhook: "https://alerts.example.com/cpu"\n'
)


def parse(text, env=ENV):
    return parse_rules(textwrap.dedent(text), "row1", env)


def test_overview_example_parses_as_written_and_fires_on_95_not_85():
    (rule,) = parse_rules(OVERVIEW, "row1", {})
    assert rule.subject == DEFAULT_SUBJECT == "agents.*.telemetry.>"
    assert [type(a) for a in rule.actions] == [PublishAction, WebhookAction]
    subject = "agents.web1.telemetry.system"
    firing = evaluate(rule, subject, b'{"cpu_percent": 95}')
    assert firing is not None
    publish, webhook = firing.actions
    assert (publish.subject, publish.payload) == ("alerts.high-cpu", b'{"cpu_percent": 95}')
    assert (webhook.url, webhook.method, webhook.body) == (
        "https://alerts.example.com/cpu", "POST", b'{"cpu_percent": 95}')
    assert evaluate(rule, subject, b'{"cpu_percent": 85}') is None


def test_defaults_ids_and_names():
    rules = parse("""
        - actions: {publish: alerts.a.b}
        - name: second
          subject: alerts.y
          action: [{webhook: "https://h/x", retries: 5, backoff: 2, timeout: 30s}]
          throttle: 1h30m
    """)
    assert [r.id for r in rules] == ["row1#0", "row1#1"]
    assert [r.name for r in rules] == ["rule 1", "second"]
    assert rules[0].condition is None and rules[0].throttle is None
    hook = rules[1].actions[0]
    assert (hook.attempts, hook.backoff, hook.timeout, hook.method) == (5, 2.0, 30.0, "POST")
    assert rules[1].throttle == 5400


@pytest.mark.parametrize(("value", "seconds"), [
    ("30s", 30), ("5m", 300), ("1h", 3600), ("1d", 86400), ("500ms", 0.5), (45, 45),
    ("1.5", 1.5), (2.5, 2.5), ("1h30m", 5400)])
def test_durations(value, seconds):
    (rule,) = parse_rules(f"actions: {{publish: alerts.a}}\nthrottle: {value!r}\n", "r", {})
    assert rule.throttle == seconds


def test_structured_http_action_and_single_action_mapping():
    (rule,) = parse("""
        trigger: {nats: {subject: "agents.*.heartbeat"}}
        action:
          http:
            url: "https://h.example/{@subject.1}"
            method: put
            headers: {X-Token: "${ALERT_TOKEN}", X-Count: 3}
            body: '{"d": "{@subject.1}"}'
    """)
    (hook,) = rule.actions
    assert hook.method == "PUT" and [h for h, _ in hook.headers] == ["X-Token", "X-Count"]
    firing = evaluate(rule, "agents.d1.heartbeat", {}, env=ENV)
    (out,) = firing.actions
    assert out.url == "https://h.example/d1"
    assert out.headers == {"X-Token": "t0k", "X-Count": "3", "Content-Type": "application/json"}
    assert out.body == b'{"d": "d1"}'


def test_yaml_mapping_payload_keeps_types_of_single_placeholders():
    (rule,) = parse("""
        subject: alerts.*
        actions:
          - publish: alerts.out
            payload: {cpu: "{cpu}", text: "cpu {cpu}", list: ["{@subject.1}", 1, null]}
    """)
    firing = evaluate(rule, "alerts.b", {"cpu": 9.5})
    assert firing.actions[0].payload == (
        b'{"cpu": 9.5, "text": "cpu 9.5", "list": ["b", 1, null]}')


def test_validate_returns_the_row_message():
    assert validate(OVERVIEW, env={}) is None
    assert validate("actions: {publish: alerts.a}\nbogus: 1\n") == (
        "line 2: unknown key 'bogus' in a rule (allowed: name, subject, trigger, match, "
        "conditions, actions, action, throttle)")


def test_error_str_names_source_and_line():
    with pytest.raises(RuleError) as info:
        parse_rules("actions: {publish: alerts.a}\nthrottle: 0\n", "rules/x.yaml")
    assert str(info.value).startswith("rules/x.yaml:2: throttle must be a positive duration")
    assert info.value.line == 2 and info.value.row_message.startswith("line 2: ")


A = "actions: {publish: alerts.a}\n"  # a rule that is valid so far
P = "actions:\n  - publish: alerts.a\n"
BAD = [
    # (yaml, line, fragment)
    ("", 1, "empty document"),
    ("# only a comment\n", 1, "empty document"),
    ("[]", 1, "list of rules is empty"),
    ("just text", 1, "expected a rule"),
    ("a: [1,\n", 2, "invalid YAML"),
    (A + "  bad indent: 1\n", 2, "invalid YAML"),
    ("- actions: {publish: alerts.a}\n- 5\n", 2, "a rule must be a mapping"),
    ("name: x\n", 1, "needs 'actions'"),
    (A + "foo: 1\n", 2, "unknown key 'foo'"),
    (A + "enabled: true\n", 2, "unknown key 'enabled'"),
    (A + "name: a\nname: b\n", 3, "duplicate key 'name'"),
    (A + "name: 5\n", 2, "name must be a string"),
    (A + "subject: foo..bar\n", 2, "empty token"),
    (A + "subject: a.>.b\n", 2, "'>' must be the last"),
    (A + "subject: 'a b'\n", 2, "whitespace"),
    (A + "subject: ''\n", 2, "must not be empty"),
    (A + "subject: a*.b\n", 2, "whole token"),
    (A + "subject: a\ntrigger: {nats: {subject: b}}\n", 3, "either"),
    (A + "trigger: {nats: {subj: b}}\n", 2, "unknown key 'subj'"),
    (A + "\nmatch: 'a >'\n", 3, "(column 4)"),
    (A + "match: \"a matches '('\"\n", 2, "invalid regular expression"),
    (A + "match: \"a matches '" + "x" * 1001 + "'\"\n", 2,
     "1001 characters long (limit 1000)"),
    (A + "match: '@subject.7 == 1'\nsubject: alerts.b\n", 2, "only 2 tokens"),
    (A + "match: '@bogus == 1'\n", 2, "unknown variable"),
    (A + "match: 'a == 1'\nconditions: {items: []}\n", 3, "either"),
    (A + "conditions:\n  operator: xor\n  items: []\n", 3, "and, or or not"),
    (A + "conditions:\n  operator: and\n", 3, "needs 'items' or 'groups'"),
    (A + "conditions:\n  items:\n    - {field: a, operator: gt}\n", 4,
     "gt needs a 'value'"),
    (A + "conditions:\n  items:\n    - {field: a, operator: bigger, "
     "value: 1}\n", 4, "unknown operator 'bigger'"),
    (A + "conditions:\n  items:\n    - field: a\n      operator: regex\n"
     "      value: '('\n", 6, "invalid regular expression"),
    (A + "conditions:\n  items:\n    - field: a\n      operator: regex\n"
     "      value: '" + "y" * 1200 + "'\n", 6, "limit 1000"),
    (A + "conditions:\n  items:\n    - field: a\n      operator: exists\n"
     "      value: 1\n", 6, "exists takes no value"),
    (A + "conditions:\n  items:\n    - field: '{a'\n      operator: exists\n",
     4, "expected a field name"),
    (A + "conditions:\n  groups:\n    - operator: or\n      items:\n"
     "        - {field: a, operator: any}\n", 6, "either 'value' or 'conditions'"),
    ("actions: []\n", 1, "must not be empty"),
    ("actions: publish\n", 1, "must be a list of actions"),
    (P + "    webhook: https://x\n", 2, "exactly one of"),
    (P + "    payloud: x\n", 3, "unknown key 'payloud'"),
    ("actions:\n  - publish: 'alerts..x'\n", 2, "empty token"),
    ("actions:\n  - publish: 'alerts.>'\n", 2, "wildcard"),
    ("subject: alerts.b\nactions:\n  - publish: 'alerts.{@subject.2}'\n", 3, "only 2 tokens"),
    (P + "    payload: '{\"a\": {b}'\n", 3, "not valid JSON"),
    (P + "    payload: |\n      {\"a\": 1,\n       \"b\": {x.}}\n", 5,
     "after '.'"),
    (P + "    payload: 'x {@nope}'\n", 3, "unknown variable"),
    (P + "    passthrough: true\n    payload: '1'\n", 3, "passthrough"),
    (P + "    passthrough: false\n", 3, "needs a 'payload'"),
    (P + "    passthrough: yes please\n", 3, "true or false"),
    ("actions:\n  - webhook: ftp://x\n", 2, "http:// or https://"),
    ("actions:\n  - webhook: https://x\n    method: FETCH\n", 3, "method must be one of"),
    ("actions:\n  - webhook: https://x\n    retries: 0\n", 3, "retries must be an integer"),
    ("actions:\n  - webhook: https://x\n    retries: 1.5\n", 3, "retries must be an integer"),
    ("actions:\n  - webhook: https://x\n    timeout: soon\n", 3, "positive duration"),
    ("actions:\n  - webhook: https://x\n    backoff: -1\n", 3, "backoff must be a number"),
    ("actions:\n  - webhook: https://x\n    headers: {A: '${NOT_SET_VAR}'}\n", 3,
     "${NOT_SET_VAR} is not allowed"),
    ("actions:\n  - webhook: https://x\n    headers: {'a b': x}\n", 3, "invalid header name"),
    ("actions:\n  - webhook: https://x\n    payload: '1'\n    body: '2'\n", 4, "either"),
    ("actions:\n  - {http: {url: https://x, to: 1}}\n", 2, "unknown key 'to'"),
    ("actions:\n  - {nats: {payload: x}}\n", 2, "needs 'subject'"),
    (P + "throttle: 5 minutes\n", 3, "positive duration"),
    (P + "throttle: -5\n", 3, "positive duration"),
    (P + "throttle: true\n", 3, "positive duration"),
    ("x: &a {publish: b}\nactions: [*a]\n", 1, "aliases are not supported"),
]


@pytest.mark.parametrize(("text", "line", "fragment"), BAD)
def test_invalid_rules_report_the_right_line(text, line, fragment):
    with pytest.raises(RuleError) as info:
        parse_rules(text, "row", ENV)
    assert fragment in info.value.message, info.value.message
    assert info.value.line == line, info.value.message


def test_missing_env_can_be_skipped_but_only_for_listed_names():
    text = "actions:\n  - webhook: https://x\n    headers: {A: '${NOT_SET_VAR}'}\n"
    assert parse_rules(text, "row", RuleEnv(["NOT_SET_VAR"], {}), check_env=False)
    with pytest.raises(RuleError, match="NOT_SET_VAR is not set"):
        parse_rules(text, "row", RuleEnv(["NOT_SET_VAR"], {}))
    with pytest.raises(RuleError, match=r"\$\{NOT_SET_VAR\} is not allowed"):
        parse_rules(text, "row", RuleEnv([], {}), check_env=False)


def test_example_rules_file_loads():
    path = Path(rule_router.__file__).parent / "example.rules.yaml"
    rules = parse_rules(path.read_text(), str(path), {"ALERT_TOKEN": "x"})
    assert len(rules) == 5
    assert {r.name for r in rules} >= {"high-cpu", "low-disk", "high-cpu-structured"}


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab:-{}[]\"' \n#&*!|>.@$", max_size=80))
def test_parser_raises_only_rule_error(text):
    try:
        parse_rules(text, "fuzz", {})
    except RuleError:
        pass
