"""Evaluation: non-JSON messages, throttling, rendering, errors."""

from __future__ import annotations

import json
import time

import pytest

from rule_router.errors import RegexTimeout, TemplateError
from rule_router.evaluate import Message, decode, evaluate, evaluate_many
from rule_router.model import MISSING
from rule_router.parse import parse_rules
from rule_router.throttle import Throttle

SUBJECT = "agents.web1.telemetry.system"


def rule(text, env=None):
    (r,) = parse_rules(text, "row", env or {})
    return r


PASS = rule("subject: agents.*.telemetry.>\nactions: [{publish: alerts.out.x}]\n")
COND = rule("match: 'a exists or not (a exists)'\nactions: [{publish: alerts.out.x}]\n")


@pytest.mark.parametrize("payload", [b"not json", b"", b"\xff\xfe", b"[1, 2]", b"42",
                                     b'"text"', b"null", b"NaN", b'{"a": NaN}'])
def test_non_object_messages_match_only_rules_without_condition(payload):
    firing = evaluate(PASS, SUBJECT, payload)
    assert firing is not None and firing.actions[0].payload == payload  # passed through
    assert evaluate(COND, SUBJECT, payload) is None  # even a tautology needs an object


def test_decode():
    assert decode(b'{"a": 1}') == Message({"a": 1}, b'{"a": 1}')
    assert decode("x").data is MISSING
    assert decode({"a": [1]}) == Message({"a": [1]}, b'{"a":[1]}')
    assert decode(b"[" * 100000).data is MISSING  # too deep: not JSON, no crash
    message = decode(b"{}")
    assert decode(message) is message


def test_evaluate_many_decodes_once_and_isolates_errors():
    rules = parse_rules("""
- name: ok
  actions: [{publish: alerts.out.a}]
- name: broken
  actions: [{publish: 'alerts.out.{nope}'}]
- name: no-match
  match: 'x == 1'
  actions: [{publish: alerts.out.c}]
- name: ok2
  actions: [{publish: alerts.out.d}]
""", "row", {})
    firings, errors = evaluate_many(rules, SUBJECT, b'{"x": 2}')
    assert [f.rule.name for f in firings] == ["ok", "ok2"]
    assert [(r.name, "nope" in str(e)) for r, e in errors] == [("broken", True)]


def test_subject_outside_the_filter_does_not_fire():
    assert evaluate(PASS, "agents.web1.heartbeat", b"{}") is None


def test_field_missing_in_a_template_is_a_template_error_naming_rule_and_action():
    r = rule("actions:\n  - publish: alerts.out.x\n  - publish: 'alerts.out.{host}'\n")
    with pytest.raises(TemplateError, match=r"rule 'rule 1': action 2 \(publish\): field 'host'"):
        evaluate(r, SUBJECT, b"{}")
    firing = evaluate(r, SUBJECT, b'{"host": "h1"}')
    assert [a.subject for a in firing.actions] == ["alerts.out.x", "alerts.out.h1"]


def test_non_json_message_and_field_template():
    r = rule("actions:\n  - publish: 'alerts.out.{host}'\n")
    with pytest.raises(TemplateError):
        evaluate(r, SUBJECT, b"plain text")


def test_throttle_per_rule_and_subject_with_injected_clock():
    now = [0.0]
    throttle = Throttle(clock=lambda: now[0])
    r = rule("match: 'cpu > 90'\nactions: [{publish: alerts.out.x}]\nthrottle: 5m\n")
    hot = b'{"cpu": 95}'
    fire = lambda subject=SUBJECT: evaluate(r, subject, hot, throttle=throttle)  # noqa: E731
    assert fire() is not None
    now[0] = 299.0
    assert fire() is None  # same rule, same subject, inside the window
    assert fire("agents.web2.telemetry.system") is not None  # another device: its own window
    assert evaluate(r, SUBJECT, b'{"cpu": 1}', throttle=throttle) is None  # no match anyway
    now[0] = 300.0
    assert fire() is not None  # window over
    now[0] = 400.0
    assert fire() is None  # a new window opened at 300
    other = rule("match: 'cpu > 90'\nactions: [{publish: alerts.out.y}]\nthrottle: 5m\n")
    assert other.id == r.id  # same row and index: same throttle key (survives reloads)
    assert evaluate(other, SUBJECT, hot, throttle=throttle) is None


def test_throttle_without_window_and_pruning():
    now = [0.0]
    t = Throttle(clock=lambda: now[0], prune_every=2)
    assert t.allow("k", None) and t.allow("k", None) and len(t) == 0
    assert t.allow("a", 1) and t.allow("b", 10)
    now[0] = 5
    assert t.allow("c", 1)
    assert t.prune() == 1 and len(t) == 2  # "a" closed
    t.forget(lambda key: key == "b")
    assert len(t) == 1


def test_webhook_content_type_and_masked_url():
    r = rule("""
actions:
  - webhook: "${HOOK}/x"
  - webhook: "https://h/x"
    body: 'CPU {cpu}'
  - webhook: "https://h/x"
    body: '{"cpu": {cpu}}'
    headers: {content-type: application/x-custom}
""", env={"HOOK": "https://user:pw@h"})
    firing = evaluate(r, SUBJECT, b'{"cpu": 1}', env={"HOOK": "https://user:pw@h"})
    a, b, c = firing.actions
    assert a.url == "https://user:pw@h/x" and a.safe_url == "***/x"
    assert a.headers["Content-Type"] == "application/json"
    assert b.headers["Content-Type"] == "text/plain; charset=utf-8" and b.body == b"CPU 1"
    assert c.headers == {"content-type": "application/x-custom"}
    passthrough = rule("actions: [{webhook: 'https://h/x'}]")
    (out,) = evaluate(passthrough, SUBJECT, b"bytes").actions
    assert out.headers["Content-Type"] == "application/octet-stream" and out.body == b"bytes"


def test_publish_headers_and_uuid_shared_between_actions():
    r = rule("""
actions:
  - publish: alerts.out.a
    headers: {Nats-Msg-Id: "{@uuid}"}
    payload: '{"id": "{@uuid}"}'
""")
    (out,) = evaluate(r, SUBJECT, b"{}").actions
    assert out.payload == f'{{"id": "{out.headers["Nats-Msg-Id"]}"}}'.encode()


def test_lone_surrogates_in_messages_still_give_valid_bytes():
    r = rule("actions:\n  - publish: alerts.out.a\n    payload: '{\"n\": \"{name}\"}'\n")
    (out,) = evaluate(r, SUBJECT, b'{"name": "\\ud800x"}').actions
    assert json.loads(out.payload) == {"n": "\ud800x"}


CATASTROPHIC = "^(a|aa)+$"  # exponential backtracking in a backtracking engine
HOSTILE = {"host": "a" * 80 + "!"}


def test_a_regex_past_its_time_limit_is_an_error_of_that_rule_only():
    rules = parse_rules(f"""
- name: slow
  match: "host matches '{CATASTROPHIC}'"
  actions: [{{publish: alerts.out.slow}}]
- name: fine
  match: "host matches '^a+!$'"
  actions: [{{publish: alerts.out.fine}}]
""", "row", {})
    started = time.perf_counter()
    firings, errors = evaluate_many(rules, SUBJECT, json.dumps(HOSTILE).encode())
    assert time.perf_counter() - started < 1  # bounded: REGEX_TIMEOUT, not minutes
    assert [f.rule.name for f in firings] == ["fine"]
    assert [(r.name, type(e)) for r, e in errors] == [("slow", RegexTimeout)]
    assert "took longer than 20 ms on a 81-character value" in str(errors[0][1])
    # ordinary input is matched as usual by the same pattern
    firings, errors = evaluate_many(rules, SUBJECT, b'{"host": "aaaa"}')
    assert [f.rule.name for f in firings] == ["slow"] and errors == []
