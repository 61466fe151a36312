"""${NAME} resolves only names listed in CAIRN_ROUTER_ENV_ALLOW (bare: every tenant;
`slug:NAME`: that tenant only): at validation the same message whether the name exists, is
another tenant's or not, at render time a counted error, never a value."""

from __future__ import annotations

import pytest

from rule_router.environment import ENV_ALLOW, RuleEnv, allowed_names
from rule_router.errors import RuleError, TemplateError
from rule_router.evaluate import evaluate, evaluate_many
from rule_router.parse import parse_rules
from rule_router.templates import Context, compile_template, render

PROCESS = {"CAIRN_ADMIN_PASSWORD": "hunter2-admin", "ALERT_TOKEN": "t0k",
           ENV_ALLOW: " ALERT_TOKEN , UNSET_BUT_LISTED,"}
RULE = ("subject: alerts.x\nactions:\n  - publish: alerts.y\n"
        "    payload: '{{\"v\": \"${{{name}}}\"}}'\n")


def _error(name: str, env: RuleEnv) -> str:
    with pytest.raises(RuleError) as info:
        parse_rules(RULE.format(name=name), "row", env)
    return info.value.row_message


def test_the_setting_is_a_comma_separated_list():
    assert allowed_names(PROCESS) == {"ALERT_TOKEN", "UNSET_BUT_LISTED"}
    assert allowed_names({}) == frozenset()
    env = RuleEnv.from_environ(PROCESS)
    assert dict(env) == {"ALERT_TOKEN": "t0k"}  # a view: only listed names that are set
    assert "hunter2" not in repr(env) and "t0k" not in repr(env)
    with pytest.raises(KeyError):
        env["CAIRN_ADMIN_PASSWORD"]


def test_an_unlisted_name_is_invalid_with_one_message_whether_it_exists_or_not():
    env = RuleEnv.from_environ(PROCESS)
    exists = _error("CAIRN_ADMIN_PASSWORD", env)
    missing = _error("CAIRN_NO_SUCH_VARIABLE", env)
    assert exists == ("line 4: actions[0].payload: ${CAIRN_ADMIN_PASSWORD} is not allowed: "
                      "list it in CAIRN_ROUTER_ENV_ALLOW")
    assert missing == exists.replace("CAIRN_ADMIN_PASSWORD", "CAIRN_NO_SUCH_VARIABLE")
    assert "hunter2" not in exists
    # the same refusal without the "is set" check (cairn-router check --no-env-check)
    assert _error("CAIRN_ADMIN_PASSWORD", RuleEnv.from_environ(PROCESS, require_set=False)) \
        == exists
    # positive control: a listed name is fine, and renders its value
    (rule,) = parse_rules(RULE.format(name="ALERT_TOKEN"), "row", env)
    firing = evaluate(rule, "alerts.x", b"{}", env=env)
    assert firing.actions[0].payload == b'{"v": "t0k"}'


def test_a_listed_but_unset_name_may_say_it_is_unset():
    env = RuleEnv.from_environ(PROCESS)
    assert _error("UNSET_BUT_LISTED", env).endswith(
        "environment variable UNSET_BUT_LISTED is not set")
    assert parse_rules(RULE.format(name="UNSET_BUT_LISTED"), "row",
                       RuleEnv.from_environ(PROCESS, require_set=False))


def test_the_default_reads_the_process_environment(monkeypatch):
    monkeypatch.setenv("CAIRN_ADMIN_PASSWORD", "hunter2-admin")
    monkeypatch.setenv("CAIRN_TEST_TOKEN", "ok")
    monkeypatch.delenv(ENV_ALLOW, raising=False)
    for name in ("CAIRN_ADMIN_PASSWORD", "CAIRN_TEST_TOKEN"):
        with pytest.raises(RuleError, match=r"is not allowed: list it in CAIRN_ROUTER_ENV_ALLOW"):
            parse_rules(RULE.format(name=name), "row")
    monkeypatch.setenv(ENV_ALLOW, "CAIRN_TEST_TOKEN")
    (rule,) = parse_rules(RULE.format(name="CAIRN_TEST_TOKEN"), "row")
    assert evaluate(rule, "alerts.x", b"{}").actions[0].payload == b'{"v": "ok"}'


def test_at_render_time_an_unlisted_name_is_an_error_never_a_value():
    # compiled without an environment (nothing known at load): judged when rendered
    template = compile_template('{"pw": "${CAIRN_ADMIN_PASSWORD}", "t": "${ALERT_TOKEN}"}',
                                "payload")
    env = RuleEnv.from_environ(PROCESS)
    with pytest.raises(TemplateError, match=r"\$\{CAIRN_ADMIN_PASSWORD\} is not allowed"):
        render(template, Context({}, "alerts.x", env=env))
    with pytest.raises(TemplateError, match=r"\$\{CAIRN_ADMIN_PASSWORD\} is not allowed"):
        render(template, Context({}, "alerts.x", env=env, mask_env=True))  # cairn-router test
    listed = compile_template('{"t": "${ALERT_TOKEN}"}', "payload")
    assert render(listed, Context({}, "alerts.x", env=env)) == '{"t": "t0k"}'


def test_evaluate_many_reports_the_unlisted_name_as_a_rule_error():
    (bad,) = parse_rules(RULE.format(name="CAIRN_ADMIN_PASSWORD"), "bad",
                         {"CAIRN_ADMIN_PASSWORD": "x"})  # validated against another env
    (good,) = parse_rules(RULE.format(name="ALERT_TOKEN"), "good", {"ALERT_TOKEN": "x"})
    firings, errors = evaluate_many([bad, good], "alerts.x", b"{}",
                                    env=RuleEnv.from_environ(PROCESS))
    assert [f.rule.source for f in firings] == ["good"]
    assert [(r.source, str(e)) for r, e in errors] == [
        ("bad", "rule 'rule 1': action 1 (publish): ${CAIRN_ADMIN_PASSWORD} is not allowed: "
                "list it in CAIRN_ROUTER_ENV_ALLOW")]
    assert "hunter2" not in str(errors)


SCOPED = {"A_TOKEN": "a-secret", "SHARED": "for-all", "B_TOKEN": "b-secret",
          ENV_ALLOW: "SHARED, a-slug:A_TOKEN, b-slug : B_TOKEN, :NOBODY, a-slug:"}


def test_a_scoped_name_is_listed_for_its_tenant_only():
    assert allowed_names(SCOPED) == {"SHARED"}  # no tenant: bare entries only
    assert allowed_names(SCOPED, "a-slug") == {"SHARED", "A_TOKEN"}
    assert allowed_names(SCOPED, "b-slug") == {"SHARED", "B_TOKEN"}
    assert allowed_names(SCOPED, "c-slug") == {"SHARED"}
    assert dict(RuleEnv.from_environ(SCOPED, tenant="a-slug")) == {"A_TOKEN": "a-secret",
                                                                   "SHARED": "for-all"}


def test_another_tenants_scoped_name_is_refused_like_an_unlisted_one():
    a = RuleEnv.from_environ(SCOPED, tenant="a-slug")
    b = RuleEnv.from_environ(SCOPED, tenant="b-slug")
    (rule,) = parse_rules(RULE.format(name="A_TOKEN"), "row", a)  # positive control
    assert evaluate(rule, "alerts.x", b"{}", env=a).actions[0].payload == b'{"v": "a-secret"}'
    refused = _error("A_TOKEN", b)
    assert refused == _error("NO_SUCH_NAME", b).replace("NO_SUCH_NAME", "A_TOKEN") == (
        "line 4: actions[0].payload: ${A_TOKEN} is not allowed: list it in "
        "CAIRN_ROUTER_ENV_ALLOW")
    # a rule validated for A and then run by B's runtime: a counted error, never the value
    with pytest.raises(TemplateError, match=r"\$\{A_TOKEN\} is not allowed"):
        evaluate(rule, "alerts.x", b"{}", env=b)
    # bare names are for every tenant
    for env in (a, b, RuleEnv.from_environ(SCOPED)):
        assert parse_rules(RULE.format(name="SHARED"), "row", env)


def test_validation_reads_the_scope_from_the_rows_tenant(monkeypatch):
    monkeypatch.setenv("A_TOKEN", "a-secret")
    monkeypatch.setenv(ENV_ALLOW, "a-slug:A_TOKEN")
    assert parse_rules(RULE.format(name="A_TOKEN"), "row", tenant="a-slug")
    for tenant in ("b-slug", None):
        with pytest.raises(RuleError, match=r"\$\{A_TOKEN\} is not allowed"):
            parse_rules(RULE.format(name="A_TOKEN"), "row", tenant=tenant)
