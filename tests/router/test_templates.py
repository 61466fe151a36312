"""Templates: JSON escaping, typed insertion, variables, environment, subjects, errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rule_router.errors import TemplateError, TemplateSyntaxError
from rule_router.templates import Context, compile_template, render

NOW = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)  # a Monday
SUBJECT = "agents.web1.telemetry.system"
MESSAGE = {
    "cpu": 95.5, "n": 3, "ok": True, "none": None, "name": "web \"one\"\n\\ é 😀",
    "obj": {"a": [1, "x"]}, "disks": [{"free": 5}, {"free": 50}], "empty": "",
    "ctl": "\x00\x1f\u2028",
}


def ctx(message=MESSAGE, subject=SUBJECT, env=None, mask=False):
    return Context(message, subject, NOW, env or {"TOKEN": "s3cr\"et"}, mask)


def fill(text, kind="payload", **kw):
    return render(compile_template(text, kind, "agents.*.telemetry.system"), ctx(**kw))


@pytest.mark.parametrize("field", ["cpu", "n", "ok", "none", "name", "obj", "disks",
                                   "empty", "ctl"])
def test_json_payload_inserts_every_type_as_valid_json(field):
    out = fill('{"v": {' + field + '}, "s": "<{' + field + '}>"}')
    doc = json.loads(out)
    assert doc["v"] == MESSAGE[field]
    inner = MESSAGE[field]
    expected = inner if isinstance(inner, str) else json.dumps(inner, ensure_ascii=False)
    assert doc["s"] == f"<{expected}>"


def test_spec_payload_example():
    out = fill('{"device": "{@subject.1}", "cpu": {cpu}}')
    assert out == '{"device": "web1", "cpu": 95.5}'


def test_escaping_in_strings_quotes_newlines_backslashes_unicode():
    out = fill('{"msg": "host {name} is hot"}')
    assert json.loads(out) == {"msg": 'host web "one"\n\\ é 😀 is hot'}
    assert "\n" not in out  # the newline is escaped, not raw
    assert "é" in out  # unicode stays readable (UTF-8), not \u-escaped


def test_placeholder_after_escaped_quote_is_still_inside_the_string():
    out = fill(r'{"a": "say \"{n}\"", "b": {n}}')
    assert json.loads(out) == {"a": 'say "3"', "b": 3}


def test_whole_payload_placeholder_is_json():
    assert fill("{obj}") == '{"a": [1, "x"]}'
    assert fill("{name}") == json.dumps(MESSAGE["name"], ensure_ascii=False)
    assert compile_template("{name}", "payload").kind == "json"


def test_text_payload_inserts_raw():
    t = compile_template("CPU {cpu}% on {@subject.1}: {name}", "payload")
    assert t.kind == "text"
    assert render(t, ctx()) == f"CPU 95.5% on web1: {MESSAGE['name']}"


def test_variables():
    assert fill("{@subject}", "text") == SUBJECT
    assert fill("{@subject.0}.{@subject.-1}", "text") == "agents.system"
    assert fill("{@timestamp}", "text") == "2024-05-06T07:08:09.123Z"
    assert fill("{@time.hour}:{@time.minute} {@time.weekday} {@time.day}", "text") == "7:8 1 6"
    c = ctx()
    t = compile_template("{@uuid} {@uuid}", "text")
    first, second = render(t, c).split()
    assert first == second and len(first) == 36  # one UUID per firing


def test_array_index_and_nested_paths():
    assert fill("{disks[1].free} {disks.0.free} {obj.a[-1]}", "text") == "50 5 x"


def test_missing_field_is_a_runtime_template_error():
    with pytest.raises(TemplateError, match="'nope' is missing"):
        fill('{"x": {nope}}')
    with pytest.raises(TemplateError, match="missing"):
        fill("{disks[5].free}", "text")


def test_env_present_missing_and_masked():
    assert json.loads(fill('{"t": "${TOKEN}"}')) == {"t": 's3cr"et'}
    assert fill('{"t": ${TOKEN}}') == '{"t": "s3cr\\"et"}'  # outside quotes: a JSON string
    with pytest.raises(TemplateError, match="NOPE is not set"):
        fill("Bearer ${NOPE}", "header")
    assert fill("Bearer ${TOKEN}", "header", mask=True) == "Bearer ***"
    assert fill("Bearer ${NOPE}", "header", mask=True) == "Bearer ***"


def test_missing_env_is_a_validation_error_when_env_is_given():
    with pytest.raises(TemplateSyntaxError, match="NOPE is not set"):
        compile_template("x ${NOPE}", "header", env={"TOKEN": "1"})
    compile_template("x ${TOKEN}", "header", env={"TOKEN": "1"})
    compile_template("x ${NOPE}", "header")  # env unknown at load: checked at render


def test_subject_templates():
    t = compile_template("alerts.{@subject.1}.{n}", "subject", "agents.*.telemetry.system")
    assert render(t, ctx()) == "alerts.web1.3"
    for field in ("name", "empty", "obj"):
        t = compile_template("alerts.{" + field + "}", "subject")
        with pytest.raises(TemplateError):
            render(t, ctx())
    t = compile_template("alerts.{w}", "subject")
    for bad in ("a*", "*", ">", "a.b", "a b"):
        with pytest.raises(TemplateError):
            render(t, ctx({"w": bad} if bad != "a.b" else {"w": ".x"}))
    assert render(t, ctx({"w": "a.b"})) == "alerts.a.b"  # dots in a value add tokens


@pytest.mark.parametrize(("text", "kind", "fragment"), [
    ("alerts..x", "subject", "empty token"),
    ("alerts.*", "subject", "wildcard"),
    ("alerts.{a} b", "subject", "whitespace"),
    ("{a", "text", "expected '}'"),
    ("{a b}", "text", "expected '}'"),
    ("{a..b}", "text", "after '.'"),
    ("${}", "text", "malformed ${NAME}"),
    ("${A", "text", "malformed ${NAME}"),
    ("{@nope}", "text", "unknown variable"),
    ("{@time.decade}", "text", "unknown variable"),
    ("{@subject.x}", "text", "use @subject or @subject.N"),
    ("{@subject.4}", "text", "only 4 tokens"),
    ("{@subject.-5}", "text", "only 4 tokens"),
    ('{"a": {b}', "payload", "not valid JSON"),
    ('{"a": 1{b}}', "payload", "not valid JSON"),
    ("[1, 2,]", "payload", "not valid JSON"),
    ("not json {a}", "json", "not valid JSON"),
])
def test_template_syntax_errors(text, kind, fragment):
    with pytest.raises(TemplateSyntaxError) as info:
        compile_template(text, kind, "agents.*.telemetry.system")
    assert fragment in info.value.message


def test_subject_index_with_open_ended_filter():
    compile_template("{@subject.9}", "text", "agents.>")  # may exist: checked at render
    with pytest.raises(TemplateError):
        render(compile_template("{@subject.9}", "text", "agents.>"), ctx())


def test_url_values_are_percent_encoded_env_raw():
    t = compile_template("${BASE}/hook/{name}?q={@subject.1}", "url")
    out = render(t, ctx(env={"BASE": "https://h.example/x"}))
    assert out.startswith("https://h.example/x/hook/web%20%22one%22%0A%5C%20")
    assert out.endswith("?q=web1")


def test_literal_braces_are_text():
    assert fill('{"a": {"b": [1, {"c": {n}}]}}') == '{"a": {"b": [1, {"c": 3}]}}'
    assert fill("{ not a placeholder } {} {1}", "text") == "{ not a placeholder } {} {1}"


def test_header_rejects_line_breaks():
    with pytest.raises(TemplateError, match="line break"):
        fill("x {name}", "header")


@given(st.text(max_size=40))
def test_compile_raises_only_template_syntax_error(text):
    for kind in ("payload", "text", "subject", "url"):
        try:
            compile_template(text, kind, "agents.*.telemetry.system")
        except TemplateSyntaxError:
            pass


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                    allow_infinity=False) | st.text(),
                    lambda kids: st.lists(kids, max_size=3)
                    | st.dictionaries(st.text(max_size=5), kids, max_size=3), max_leaves=8))
def test_json_payload_is_valid_for_any_value(value):
    out = render(compile_template('{"v": {v}, "s": "x{v}y", "l": [{v}]}', "payload"),
                 ctx({"v": value}))
    doc = json.loads(out)
    assert doc["v"] == value and doc["l"] == [value]
