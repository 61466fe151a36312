"""Rule parsing: both forms, the overview's example, defaults, and errors with their line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rule_router
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
        - actions: {publish: a.b}
        - name: second
          subject: x.y
          action: [{webhook: "https://h/x", retries: 5, backoff: 2, timeout: 1m}]
          throttle: 1h30m
    """)
    assert [r.id for r in rules] == ["row1#0", "row1#1"]
    assert [r.name for r in rules] == ["rule 1", "second"]
    assert rules[0].condition is None and rules[0].throttle is None
    hook = rules[1].actions[0]
    assert (hook.attempts, hook.backoff, hook.timeout, hook.method) == (5, 2.0, 60.0, "POST")
    assert rules[1].throttle == 5400


@pytest.mark.parametrize(("value", "seconds"), [
    ("30s", 30), ("5m", 300), ("1h", 3600), ("1d", 86400), ("500ms", 0.5), (45, 45),
    ("1.5", 1.5), (2.5, 2.5), ("1h30m", 5400)])
def test_durations(value, seconds):
    (rule,) = parse_rules(f"actions: {{publish: a}}\nthrottle: {value!r}\n", "r", {})
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
        subject: a.*
        actions:
          - publish: out
            payload: {cpu: "{cpu}", text: "cpu {cpu}", list: ["{@subject.1}", 1, null]}
    """)
    firing = evaluate(rule, "a.b", {"cpu": 9.5})
    assert firing.actions[0].payload == (
        b'{"cpu": 9.5, "text": "cpu 9.5", "list": ["b", 1, null]}')


def test_validate_returns_the_row_message():
    assert validate(OVERVIEW, env={}) is None
    assert validate("actions: {publish: a}\nbogus: 1\n") == (
        "line 2: unknown key 'bogus' in a rule (allowed: name, subject, trigger, match, "
        "conditions, actions, action, throttle)")


def test_error_str_names_source_and_line():
    with pytest.raises(RuleError) as info:
        parse_rules("actions: {publish: a}\nthrottle: 0\n", "rules/x.yaml")
    assert str(info.value).startswith("rules/x.yaml:2: throttle must be a positive duration")
    assert info.value.line == 2 and info.value.row_message.startswith("line 2: ")


BAD = [
    # (yaml, line, fragment)
    ("", 1, "empty document"),
    ("# only a comment\n", 1, "empty document"),
    ("[]", 1, "list of rules is empty"),
    ("just text", 1, "expected a rule"),
    ("a: [1,\n", 2, "invalid YAML"),
    ("actions: {publish: a}\n  bad indent: 1\n", 2, "invalid YAML"),
    ("- actions: {publish: a}\n- 5\n", 2, "a rule must be a mapping"),
    ("name: x\n", 1, "needs 'actions'"),
    ("actions: {publish: a}\nfoo: 1\n", 2, "unknown key 'foo'"),
    ("actions: {publish: a}\nenabled: true\n", 2, "unknown key 'enabled'"),
    ("actions: {publish: a}\nname: a\nname: b\n", 3, "duplicate key 'name'"),
    ("actions: {publish: a}\nname: 5\n", 2, "name must be a string"),
    ("actions: {publish: a}\nsubject: foo..bar\n", 2, "empty token"),
    ("actions: {publish: a}\nsubject: a.>.b\n", 2, "'>' must be the last"),
    ("actions: {publish: a}\nsubject: 'a b'\n", 2, "whitespace"),
    ("actions: {publish: a}\nsubject: ''\n", 2, "must not be empty"),
    ("actions: {publish: a}\nsubject: a*.b\n", 2, "whole token"),
    ("actions: {publish: a}\nsubject: a\ntrigger: {nats: {subject: b}}\n", 3, "either"),
    ("actions: {publish: a}\ntrigger: {nats: {subj: b}}\n", 2, "unknown key 'subj'"),
    ("actions: {publish: a}\n\nmatch: 'a >'\n", 3, "(column 4)"),
    ("actions: {publish: a}\nmatch: \"a matches '('\"\n", 2, "invalid regular expression"),
    ("actions: {publish: a}\nmatch: \"a matches '" + "x" * 1001 + "'\"\n", 2,
     "1001 characters long (limit 1000)"),
    ("actions: {publish: a}\nmatch: '@subject.7 == 1'\nsubject: a.b\n", 2, "only 2 tokens"),
    ("actions: {publish: a}\nmatch: '@bogus == 1'\n", 2, "unknown variable"),
    ("actions: {publish: a}\nmatch: 'a == 1'\nconditions: {items: []}\n", 3, "either"),
    ("actions: {publish: a}\nconditions:\n  operator: xor\n  items: []\n", 3, "and, or or not"),
    ("actions: {publish: a}\nconditions:\n  operator: and\n", 3, "needs 'items' or 'groups'"),
    ("actions: {publish: a}\nconditions:\n  items:\n    - {field: a, operator: gt}\n", 4,
     "gt needs a 'value'"),
    ("actions: {publish: a}\nconditions:\n  items:\n    - {field: a, operator: bigger, "
     "value: 1}\n", 4, "unknown operator 'bigger'"),
    ("actions: {publish: a}\nconditions:\n  items:\n    - field: a\n      operator: regex\n"
     "      value: '('\n", 6, "invalid regular expression"),
    ("actions: {publish: a}\nconditions:\n  items:\n    - field: a\n      operator: regex\n"
     "      value: '" + "y" * 1200 + "'\n", 6, "limit 1000"),
    ("actions: {publish: a}\nconditions:\n  items:\n    - field: a\n      operator: exists\n"
     "      value: 1\n", 6, "exists takes no value"),
    ("actions: {publish: a}\nconditions:\n  items:\n    - field: '{a'\n      operator: exists\n",
     4, "expected a field name"),
    ("actions: {publish: a}\nconditions:\n  groups:\n    - operator: or\n      items:\n"
     "        - {field: a, operator: any}\n", 6, "either 'value' or 'conditions'"),
    ("actions: []\n", 1, "must not be empty"),
    ("actions: publish\n", 1, "must be a list of actions"),
    ("actions:\n  - publish: a\n    webhook: https://x\n", 2, "exactly one of"),
    ("actions:\n  - publish: a\n    payloud: x\n", 3, "unknown key 'payloud'"),
    ("actions:\n  - publish: 'alerts..x'\n", 2, "empty token"),
    ("actions:\n  - publish: 'alerts.>'\n", 2, "wildcard"),
    ("subject: a.b\nactions:\n  - publish: 'x.{@subject.2}'\n", 3, "only 2 tokens"),
    ("actions:\n  - publish: a\n    payload: '{\"a\": {b}'\n", 3, "not valid JSON"),
    ("actions:\n  - publish: a\n    payload: |\n      {\"a\": 1,\n       \"b\": {x.}}\n", 5,
     "after '.'"),
    ("actions:\n  - publish: a\n    payload: 'x {@nope}'\n", 3, "unknown variable"),
    ("actions:\n  - publish: a\n    passthrough: true\n    payload: '1'\n", 3, "passthrough"),
    ("actions:\n  - publish: a\n    passthrough: false\n", 3, "needs a 'payload'"),
    ("actions:\n  - publish: a\n    passthrough: yes please\n", 3, "true or false"),
    ("actions:\n  - webhook: ftp://x\n", 2, "http:// or https://"),
    ("actions:\n  - webhook: https://x\n    method: FETCH\n", 3, "method must be one of"),
    ("actions:\n  - webhook: https://x\n    retries: 0\n", 3, "retries must be an integer"),
    ("actions:\n  - webhook: https://x\n    retries: 1.5\n", 3, "retries must be an integer"),
    ("actions:\n  - webhook: https://x\n    timeout: soon\n", 3, "positive duration"),
    ("actions:\n  - webhook: https://x\n    backoff: -1\n", 3, "backoff must be a number"),
    ("actions:\n  - webhook: https://x\n    headers: {A: '${NOT_SET_VAR}'}\n", 3,
     "NOT_SET_VAR is not set"),
    ("actions:\n  - webhook: https://x\n    headers: {'a b': x}\n", 3, "invalid header name"),
    ("actions:\n  - webhook: https://x\n    payload: '1'\n    body: '2'\n", 4, "either"),
    ("actions:\n  - {http: {url: https://x, to: 1}}\n", 2, "unknown key 'to'"),
    ("actions:\n  - {nats: {payload: x}}\n", 2, "needs 'subject'"),
    ("actions:\n  - publish: a\nthrottle: 5 minutes\n", 3, "positive duration"),
    ("actions:\n  - publish: a\nthrottle: -5\n", 3, "positive duration"),
    ("actions:\n  - publish: a\nthrottle: true\n", 3, "positive duration"),
    ("x: &a {publish: b}\nactions: [*a]\n", 1, "aliases are not supported"),
]


@pytest.mark.parametrize(("text", "line", "fragment"), BAD)
def test_invalid_rules_report_the_right_line(text, line, fragment):
    with pytest.raises(RuleError) as info:
        parse_rules(text, "row", ENV)
    assert fragment in info.value.message, info.value.message
    assert info.value.line == line, info.value.message


def test_missing_env_can_be_skipped():
    text = "actions:\n  - webhook: https://x\n    headers: {A: '${NOT_SET_VAR}'}\n"
    assert parse_rules(text, "row", {}, check_env=False)


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
