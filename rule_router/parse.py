"""Rule parsing and validation: YAML text → `list[Rule]`, or the first error with its line.

A document holds one rule (a mapping) or a list of rules. Both forms compile into the same
model and may be mixed key by key, as long as each thing is said once:

    name         optional; default "rule N"
    subject      NATS filter (wildcards ok)    | trigger: {nats: {subject: ...}}
    match        expression string             | conditions: {operator, items, groups}
    actions      list (or one mapping)         | action (synonym)
    throttle     "30s", "5m", "1h", "1h30m" or seconds

A missing subject means `agents.*.telemetry.>`; a missing condition means always true.
Unknown keys, wrong types, bad subjects, regexes, templates, variables and durations are
errors; so is what a tenant admin may not do (SPEC §11): listening outside `agents.>` and
`alerts.>`, publishing outside `alerts.`, a `${NAME}` not listed in CAIRN_ROUTER_ENV_ALLOW
(for the row's tenant), a webhook to a literal non-public address, webhook numbers past
the bounds in `model`, a webhook header the HTTP client owns (`Host`, framing, `Proxy-*`),
a header the router stamps (`Cairn-Hops`, `Cairn-Budget`), more actions per rule or rules
per row than `fanout` allows.
A rule that publishes where it listens is valid, with a warning in `Rule.warnings`.
Errors are `RuleError(message, line)` with the 1-based line of the offending key or value
(from the YAML node marks); `parse_rules` raises the first one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from rule_router.addresses import EgressPolicy, literal_refusal
from rule_router.conditions import check_variables, group
from rule_router.environment import RuleEnv
from rule_router.errors import ExpressionError, RuleError, TemplateSyntaxError
from rule_router.expression import parse_expression
from rule_router.fanout import MAX_ACTIONS, MAX_RULES, RESERVED_HEADERS
from rule_router.hops import self_loop_warnings
from rule_router.model import (
    DEFAULT_SUBJECT,
    MAX_ATTEMPTS,
    MAX_BACKOFF,
    MAX_TIMEOUT,
    Action,
    PublishAction,
    Rule,
    WebhookAction,
    reserved_webhook_header,
)
from rule_router.predicates import compile_condition
from rule_router.subjects import PUBLISH_PREFIX, filter_error, namespace_error
from rule_router.templates import Template, compile_template
from rule_router.yamlnodes import (
    compose,
    duration,
    line,
    literal,
    mapping,
    number,
    scalar,
    string,
    template_line,
)

RULE_KEYS = ("name", "subject", "trigger", "match", "conditions", "actions", "action",
             "throttle")


def parse_rules(text: str, source: str = "", env: Mapping[str, str] | None = None,
                check_env: bool = True, egress: EgressPolicy | None = None,
                tenant: str | None = None) -> list[Rule]:
    """Parse a `rules.yaml` value. `source` (a row id or file name) prefixes rule ids and
    error messages. `${NAME}` must be allowed by `env` — default: the process environment
    through CAIRN_ROUTER_ENV_ALLOW; a plain mapping is every name visible — and set in it,
    unless `check_env` is false. Webhook hosts written as addresses are checked against
    `egress` (default: CAIRN_ROUTER_WEBHOOK_ALLOW). The defaults apply the entries scoped
    to `tenant` (a slug) besides the bare ones. Raises the first RuleError."""
    env_map = _rule_env(env, check_env, tenant)
    egress = EgressPolicy.from_environ(tenant=tenant) if egress is None else egress
    try:
        root = compose(text)
        nodes = root.value if isinstance(root, SequenceNode) else [root]
        if isinstance(root, SequenceNode) and not nodes:
            raise RuleError("the list of rules is empty", line(root))
        if len(nodes) > MAX_RULES:
            raise RuleError(f"too many rules: at most {MAX_RULES} per row (got {len(nodes)})",
                            line(nodes[MAX_RULES]))
        rules = []
        for index, node in enumerate(nodes):
            rules.append(_rule(node, index, source, env_map, egress))
        return rules
    except RuleError as exc:
        exc.source = source
        raise
    except RecursionError:
        raise RuleError("the document is nested too deeply", None, source) from None


def _rule_env(env: Mapping[str, str] | None, check_env: bool, tenant: str | None) -> RuleEnv:
    if env is None:
        return RuleEnv.from_environ(require_set=check_env, tenant=tenant)
    if isinstance(env, RuleEnv):
        return RuleEnv(env.allow, env.source, require_set=env.require_set and check_env)
    return RuleEnv(env, env, require_set=check_env)


def validate(text: str, source: str = "", env: Mapping[str, str] | None = None,
             tenant: str | None = None) -> str | None:
    """None when valid, else the message for a PocketBase row: `line N: message`."""
    try:
        parse_rules(text, source, env, tenant=tenant)
    except RuleError as exc:
        return exc.row_message
    return None


def load_file(path: str | Path, env: Mapping[str, str] | None = None,
              check_env: bool = True, tenant: str | None = None) -> list[Rule]:
    """Parse a rules file (as for `tenant`, see parse_rules); errors name the file.
    OSError is converted to RuleError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(f"cannot read: {exc}", None, str(path)) from None
    return parse_rules(text, str(path), env, check_env, tenant=tenant)


# ----------------------------------------------------------------------------- rules

def _rule(node: Node, index: int, source: str, env: RuleEnv, egress: EgressPolicy) -> Rule:
    m = mapping(node, "a rule", RULE_KEYS)
    for a, b in (("subject", "trigger"), ("match", "conditions"), ("action", "actions")):
        if a in m and b in m:
            raise RuleError(f"use either {a!r} or {b!r}, not both", line(m[b][0]))
    name = string(m["name"][1], "name") if "name" in m else f"rule {index + 1}"
    subject, subject_node = DEFAULT_SUBJECT, node
    if "subject" in m:
        subject_node = m["subject"][1]
        subject = string(subject_node, "subject")
    elif "trigger" in m:
        trig = mapping(m["trigger"][1], "trigger", ("nats",))
        if "nats" not in trig:
            raise RuleError("trigger needs 'nats: {subject: ...}'", line(m["trigger"][0]))
        nats = mapping(trig["nats"][1], "trigger.nats", ("subject",))
        if "subject" not in nats:
            raise RuleError("trigger.nats needs a 'subject'", line(trig["nats"][0]))
        subject_node = nats["subject"][1]
        subject = string(subject_node, "trigger.nats.subject")
    problem = filter_error(subject) or namespace_error(subject)
    if problem:
        raise RuleError(problem, line(subject_node))
    condition, match_text = None, None
    if "match" in m:
        key, value = m["match"]
        match_text = string(value, "match")
        try:
            condition = parse_expression(match_text)
        except ExpressionError as exc:
            raise RuleError(f"match: {exc.message} (column {exc.column})", line(key)) from None
        check_variables(condition, subject, line(key))
    elif "conditions" in m:
        condition = group(m["conditions"][1], "conditions", subject, 0)
    key_name = "actions" if "actions" in m else "action"
    if key_name not in m:
        raise RuleError("a rule needs 'actions' (publish or webhook)", line(node))
    actions = parse_actions(m[key_name][1], subject, env, egress)
    throttle = duration(m["throttle"][1], "throttle") if "throttle" in m else None
    rule = Rule(id=f"{source}#{index}", name=name, subject=subject, condition=condition,
                actions=actions, throttle=throttle, line=line(node), source=source,
                match=match_text,
                predicate=None if condition is None else compile_condition(condition))
    return replace(rule, warnings=self_loop_warnings(rule))


# ----------------------------------------------------------------------------- actions

_KINDS = {  # action key → (nested?, allowed keys, subject/url key)
    "publish": (False, ("publish", "payload", "passthrough", "headers")),
    "webhook": (False, ("webhook", "method", "headers", "payload", "body", "timeout",
                        "retries", "backoff")),
    "nats": (True, ("subject", "payload", "passthrough", "headers")),
    "http": (True, ("url", "method", "headers", "payload", "body", "timeout", "retries",
                    "backoff")),
}
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def parse_actions(node: Node, subject: str, env: Mapping[str, str] | None,
                  egress: EgressPolicy | None = None) -> tuple[Action, ...]:
    """One action mapping or a list of them; each is publish/webhook (short) or nats/http
    (structured)."""
    egress = EgressPolicy.from_environ() if egress is None else egress
    items = [node] if isinstance(node, MappingNode) else getattr(node, "value", None)
    if not isinstance(items, list):
        raise RuleError("actions must be a list of actions (or one action)", line(node))
    if not items:
        raise RuleError("actions must not be empty", line(node))
    if len(items) > MAX_ACTIONS:
        raise RuleError(f"too many actions: at most {MAX_ACTIONS} per rule (got {len(items)})",
                        line(items[MAX_ACTIONS]))
    return tuple(_action(n, f"actions[{i}]", subject, env, egress)
                 for i, n in enumerate(items))


def _action(node: Node, what: str, subject: str, env: Mapping[str, str] | None,
            egress: EgressPolicy) -> Action:
    keys = [k.value for k, _ in node.value] if isinstance(node, MappingNode) else []
    kinds = [k for k in _KINDS if k in keys]
    if len(kinds) != 1:
        raise RuleError(f"{what}: an action needs exactly one of publish, webhook, nats, http",
                        line(node))
    kind = kinds[0]
    nested, allowed = _KINDS[kind]
    if nested:
        outer = mapping(node, what, (kind,))
        what = f"{what}.{kind}"
        m = mapping(outer[kind][1], what, allowed)
        target = "subject" if kind == "nats" else "url"
    else:
        m = mapping(node, what, allowed)
        target = kind
    if target not in m:
        raise RuleError(f"{what} needs '{target}'", line(node))
    target_node = m[target][1]
    headers = _headers(m, what, subject, env, kind in ("webhook", "http"))
    if kind in ("publish", "nats"):
        return _publish(m, what, target, subject, env, headers, node)
    url = _template(target_node, f"{what}.{target}", "url", subject, env)
    first = url.parts[0] if url.parts else ""
    if isinstance(first, str) and not first.startswith(("http://", "https://")):
        raise RuleError(f"{what}.{target} must start with http:// or https://",
                        line(target_node))
    refusal = None if any(p.env for p in url.placeholders) else literal_refusal(
        [p if isinstance(p, str) else None for p in url.parts], egress)
    if refusal:
        raise RuleError(f"{what}.{target}: {refusal}", line(target_node))
    method = "POST"
    if "method" in m:
        method = string(m["method"][1], f"{what}.method").upper()
        if method not in METHODS:
            raise RuleError(f"{what}.method must be one of {', '.join(METHODS)}",
                            line(m["method"][1]))
    attempts = 3
    if "retries" in m:
        attempts = int(number(m["retries"][1], f"{what}.retries", 1, integer=True))
        _at_most(attempts, MAX_ATTEMPTS, f"{what}.retries", m["retries"][1], " attempts")
    timeout = 10.0
    if "timeout" in m:
        timeout = duration(m["timeout"][1], f"{what}.timeout")
        _at_most(timeout, MAX_TIMEOUT, f"{what}.timeout", m["timeout"][1], "s")
    return WebhookAction(
        url=url, method=method, headers=headers, body=_payload(m, what, subject, env),
        timeout=timeout, attempts=attempts, backoff=_backoff(m, what), line=line(node))


def _publish(m: dict[str, tuple[Node, Node]], what: str, target: str, subject: str,
             env: Mapping[str, str] | None, headers: tuple[tuple[str, Template], ...],
             node: Node) -> PublishAction:
    target_node = m[target][1]
    template = _template(target_node, f"{what}.{target}", "subject", subject, env)
    first = template.parts[0] if template.parts else ""
    if not (isinstance(first, str) and first.startswith(PUBLISH_PREFIX)):
        raise RuleError(f"{what}.{target} must start with {PUBLISH_PREFIX!r}: rules publish "
                        f"only under {PUBLISH_PREFIX}>", line(target_node))
    for name, _ in headers:
        for reserved in RESERVED_HEADERS:
            if name.lower() == reserved.lower():
                raise RuleError(f"{what}.headers: {reserved} is set by the router",
                                line(m["headers"][1]))
    return PublishAction(template, _payload(m, what, subject, env), headers, line(node))


def _at_most(value: float, bound: float, what: str, node: Node, unit: str) -> None:
    if value > bound:
        raise RuleError(f"{what} must be at most {bound:g}{unit} (got {value:g})", line(node))


def _backoff(m: dict[str, tuple[Node, Node]], what: str) -> float:
    if "backoff" not in m:
        return 0.5
    node = m["backoff"][1]
    if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:str":
        value = duration(node, f"{what}.backoff")
    else:
        value = float(number(node, f"{what}.backoff", 0))
    _at_most(value, MAX_BACKOFF, f"{what}.backoff", node, "s")
    return value


def _template(node: Node, what: str, kind: str, subject: str,
              env: Mapping[str, str] | None) -> Template:
    if kind == "json":
        text = json_template_text(node)
    else:
        text = string(node, what)
    try:
        return compile_template(text, kind, subject, env)
    except TemplateSyntaxError as exc:
        at = line(node) if kind == "json" else template_line(node, text, exc.offset)
        raise RuleError(f"{what}: {exc.message}", at) from None


def _payload(m: dict[str, tuple[Node, Node]], what: str, subject: str,
             env: Mapping[str, str] | None) -> Template | None:
    present = [k for k in ("payload", "body") if k in m]
    if len(present) > 1:
        raise RuleError(f"{what}: use either 'payload' or 'body'", line(m["body"][0]))
    passthrough = None
    if "passthrough" in m:
        passthrough = scalar(m["passthrough"][1], f"{what}.passthrough")
        if not isinstance(passthrough, bool):
            raise RuleError(f"{what}.passthrough must be true or false",
                            line(m["passthrough"][1]))
        if passthrough and present:
            raise RuleError(f"{what}: passthrough: true sends the original message; "
                            f"remove 'payload' or passthrough", line(m["passthrough"][0]))
        if not passthrough and not present:
            raise RuleError(f"{what}: passthrough: false needs a 'payload'",
                            line(m["passthrough"][0]))
    if not present:
        return None
    node = m[present[0]][1]
    kind = "json" if isinstance(node, MappingNode | SequenceNode) else "payload"
    return _template(node, f"{what}.{present[0]}", kind, subject, env)


def json_template_text(node: Node) -> str:
    """A YAML mapping/list payload as a JSON template. A string that is exactly one
    placeholder (`cpu: "{cpu_percent}"`) inserts the value with its JSON type."""
    if isinstance(node, MappingNode):
        return "{" + ", ".join(f"{json.dumps(str(literal(k)), ensure_ascii=False)}: "
                               f"{json_template_text(v)}" for k, v in node.value) + "}"
    if isinstance(node, SequenceNode):
        return "[" + ", ".join(json_template_text(v) for v in node.value) + "]"
    value = literal(node)
    if isinstance(value, str) and re.fullmatch(r"(\{@?[A-Za-z_][^{}]*\}|\$\{\w+\})", value):
        return value
    return json.dumps(value, ensure_ascii=False)


def _headers(m: dict[str, tuple[Node, Node]], what: str, subject: str,
             env: Mapping[str, str] | None, http: bool) -> tuple[tuple[str, Template], ...]:
    if "headers" not in m:
        return ()
    node = m["headers"][1]
    out = []
    for name, (key, value) in mapping(node, f"{what}.headers", None).items():
        if not _HEADER_NAME.fullmatch(name):
            raise RuleError(f"{what}.headers: invalid header name {name!r}", line(key))
        if http and reserved_webhook_header(name):
            raise RuleError(f"{what}.headers: {name} is set by the router's HTTP client, "
                            "not by rules", line(key))
        if isinstance(value, ScalarNode) and value.tag != "tag:yaml.org,2002:str":
            raw = literal(value)
            if isinstance(raw, bool) or raw is None:
                raise RuleError(f"{what}.headers.{name} must be a string", line(value))
            out.append((name, compile_template(str(raw), "header")))
            continue
        out.append((name, _template(value, f"{what}.headers.{name}", "header", subject, env)))
    return tuple(out)

