"""A tenant runtime's guards on received messages (no connection needed to evaluate): the
hop limit, the server's answers to JetStream requests, and `${NAME}` outside the
allowlist (or scoped to another tenant) at render time."""

from __future__ import annotations

from nats.aio.msg import Msg

from rule_router import metrics
from rule_router.hops import limit_warning
from rule_router.parse import parse_rules
from rule_router.ruleset import RuleSet
from rule_router.tenant import SERVICE_USER, TenantRouter

LOOP = "subject: alerts.x.loop\nactions:\n  - publish: alerts.x.loop\n"
WATCH = "subject: alerts.x.*\nactions:\n  - publish: alerts.watched\n"


def _msg(subject: str, data: bytes = b"{}", hops: str | None = None) -> Msg:
    return Msg(_client=None, subject=subject, data=data,  # type: ignore[arg-type]
               headers=None if hops is None else {"Cairn-Hops": hops})


def _tenant(by_source: dict[str, str], warnings: list | None = None) -> TenantRouter:
    router = TenantRouter("t1", "nats://127.0.0.1:1", lambda: ("", ""), None,  # type: ignore[arg-type]
                          on_warn=None if warnings is None else
                          lambda rule, message: warnings.append((rule.source, message)))
    router.ruleset = RuleSet.build({src: parse_rules(text, src, {})
                                    for src, text in by_source.items()})
    return router


def _dropped() -> float:
    return metrics.LOOP_DROPPED._value.get()


def test_the_service_user_is_a_parameter():
    assert SERVICE_USER == "cairn-router"
    assert _tenant({}).user == SERVICE_USER
    other = TenantRouter("t1", "nats://x", lambda: ("", ""), None, user="router-b")  # type: ignore[arg-type]
    assert other.user == "router-b"


def test_a_message_at_the_hop_limit_is_not_evaluated_and_is_reported_once_per_rule():
    warnings: list = []
    router = _tenant({"loop": LOOP, "watch": WATCH}, warnings)
    before = _dropped()
    # below the limit: evaluated (positive control)
    assert [f.rule.source for f in router.evaluate(_msg("alerts.x.loop", hops="2"))] == [
        "loop", "watch"]
    assert _dropped() == before and warnings == []
    for _ in range(5):
        assert router.evaluate(_msg("alerts.x.loop", hops="3")) == []
    assert router.evaluate(_msg("alerts.x.loop", hops="40")) == []
    assert _dropped() == before + 6
    assert warnings == [("loop", limit_warning("alerts.x.loop")),
                        ("watch", limit_warning("alerts.x.loop"))]  # throttled per rule
    assert "not evaluated" in warnings[0][1] and "3 rules" in warnings[0][1]
    # a subject no rule listens on costs nothing and is not counted
    assert router.evaluate(_msg("alerts.y", hops="9")) == []
    assert _dropped() == before + 6


def test_an_unlisted_variable_at_render_time_is_a_counted_error_never_a_value(monkeypatch):
    monkeypatch.setenv("CAIRN_ADMIN_PASSWORD", "hunter2-admin")
    monkeypatch.setenv("CAIRN_TEST_LISTED", "fine")
    monkeypatch.setenv("CAIRN_ROUTER_ENV_ALLOW", "CAIRN_TEST_LISTED")
    payload = "subject: alerts.in\nactions:\n  - publish: alerts.out\n    payload: '${{{}}}'\n"
    router = TenantRouter("t1", "nats://x", lambda: ("", ""), None)  # type: ignore[arg-type]
    # the row was validated somewhere the name was visible; this router does not list it
    router.ruleset = RuleSet.build({
        "bad": parse_rules(payload.format("CAIRN_ADMIN_PASSWORD"), "bad",
                           {"CAIRN_ADMIN_PASSWORD": "x"}),
        "good": parse_rules(payload.format("CAIRN_TEST_LISTED"), "good",
                            {"CAIRN_TEST_LISTED": "x"})})
    errors = metrics.RUNTIME_ERRORS._value.get()
    firings = router.evaluate(_msg("alerts.in"))
    assert metrics.RUNTIME_ERRORS._value.get() == errors + 1
    assert [(f.rule.source, f.actions[0].payload) for f in firings] == [("good", b'"fine"')]


def test_a_server_answer_on_a_rule_subject_is_dropped_before_evaluation():
    router = _tenant({"watch": WATCH})
    before = metrics.SERVER_REPLIES_DROPPED._value.get()
    direct_get = Msg(_client=None, subject="alerts.x.in", data=b'{"cpu": 99}',  # type: ignore[arg-type]
                     headers={"Nats-Stream": "TELEMETRY", "Nats-Sequence": "3"})
    status = Msg(_client=None, subject="alerts.x.in", data=b"",  # type: ignore[arg-type]
                 headers={"Status": "404", "Description": "Message Not Found"})
    for msg in (direct_get, status, _msg("alerts.x.in", b'{"stream":"TELEMETRY","seq":3}')):
        assert router.evaluate(msg) == []
    assert metrics.SERVER_REPLIES_DROPPED._value.get() == before + 3
    assert router.guards.dropped["server-reply"] == 3
    # positive control: the same subject with an ordinary message fires
    assert [f.rule.source for f in router.evaluate(_msg("alerts.x.in", b'{"cpu": 99}'))] == [
        "watch"]
    # a subject no rule listens on costs nothing and is not counted
    assert router.evaluate(Msg(_client=None, subject="alerts.y", data=b"",  # type: ignore[arg-type]
                               headers={"Status": "404"})) == []
    assert metrics.SERVER_REPLIES_DROPPED._value.get() == before + 3


def test_the_runtime_reads_allow_entries_for_its_own_tenant(monkeypatch):
    monkeypatch.setenv("CAIRN_TEST_A_TOKEN", "a-secret")
    monkeypatch.setenv("CAIRN_ROUTER_ENV_ALLOW", "a-slug:CAIRN_TEST_A_TOKEN")
    payload = ("subject: alerts.in\nactions:\n  - publish: alerts.out\n"
               "    payload: '${CAIRN_TEST_A_TOKEN}'\n")
    rules = {"row": parse_rules(payload, "row", {"CAIRN_TEST_A_TOKEN": "x"})}
    a = TenantRouter("a-slug", "nats://x", lambda: ("", ""), None)
    b = TenantRouter("b-slug", "nats://x", lambda: ("", ""), None)
    a.ruleset = b.ruleset = RuleSet.build(rules)
    errors = metrics.RUNTIME_ERRORS._value.get()
    assert [f.actions[0].payload for f in a.evaluate(_msg("alerts.in"))] == [b'"a-secret"']
    assert b.evaluate(_msg("alerts.in")) == []  # B's runtime never renders A's token
    assert metrics.RUNTIME_ERRORS._value.get() == errors + 1
