"""Evaluation: does a rule match a message, and what exactly would its actions send?

Decisions:
- A payload that is not JSON, or JSON but not an object, matches only rules without a
  condition (`match`/`conditions` absent). Such rules can still pass it through;
  templates that read fields then fail with TemplateError.
- Inside a condition, a missing field makes every operator false except `not_exists`;
  a field compared with another missing field is false too. `not` negates the AND of its
  items, so `not (x > 1)` is true when x is missing while `x <= 1` is false.
- `any`/`all`/`none` need an array (anything else: false); with a nested condition each
  element becomes the root for the paths inside it; with a value each element is
  compared with `eq`. Empty array: any false, all true, none true.
- Actions are rendered all or nothing: one TemplateError fails the whole firing.
- `${NAME}` sees only the names in CAIRN_ROUTER_ENV_ALLOW (default `env`: a RuleEnv of
  the process environment); a plain `env` mapping is taken as all there is to see.
- The throttle is checked after the condition and before rendering: a window opens when
  a rule matches and may fire, even if rendering then fails (errors are then reported at
  most once per window too).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from rule_router.environment import RuleEnv
from rule_router.errors import RegexTimeout, RouterError, TemplateError
from rule_router.model import (
    MISSING,
    Firing,
    Node,
    Out,
    PublishAction,
    PublishOut,
    Rule,
    WebhookAction,
    WebhookOut,
)
from rule_router.predicates import compile_condition
from rule_router.subjects import subject_matches
from rule_router.templates import Context, encode, render
from rule_router.throttle import Throttle


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # json.loads builds one per call


@dataclass(slots=True)
class Message:
    """A payload decoded once: `data` is the JSON value (MISSING when not JSON) and `raw`
    the bytes as received (what pass-through actions send)."""

    data: Any
    raw: bytes


def decode(payload: bytes | str | Any) -> Message:
    """Decode a payload. Bytes/str are parsed as JSON (NaN/Infinity rejected); any other
    object is taken as already decoded and encoded compactly for pass-through."""
    if isinstance(payload, Message):
        return payload
    if isinstance(payload, bytes | bytearray | memoryview | str):
        raw = payload.encode() if isinstance(payload, str) else bytes(payload)
        try:
            # what json.loads does with bytes, minus its encoding sniffing for the usual case
            utf8 = raw[:1] == b"{" and raw[1:2] != b"\x00"
            text = raw.decode("utf-8" if utf8 else json.detect_encoding(raw), "surrogatepass")
            return Message(_DECODER.decode(text), raw)
        except (ValueError, RecursionError):
            return Message(MISSING, raw)
    return Message(payload, json.dumps(payload, separators=(",", ":")).encode())


def matches(node: Node, ctx: Context, root: Any = MISSING) -> bool:
    """Evaluate a condition tree; `root` (default: the message) is what paths start from.
    Rules carry their tree compiled (`Rule.predicate`); this compiles it on the spot."""
    return compile_condition(node)(ctx, root)


def evaluate(rule: Rule, subject: str, payload: bytes | str | Any, *,
             now: datetime | None = None, env: Mapping[str, str] | None = None,
             mask_env: bool = False, throttle: Throttle | None = None) -> Firing | None:
    """The rule's firing for one message, or None (no subject match, no condition match,
    or throttled). Raises TemplateError when an action cannot be rendered."""
    if not subject_matches(rule.subject, subject):
        return None
    decoded = decode(payload)
    ctx = Context(decoded.data, subject, now or datetime.now(UTC),
                  env if env is not None else RuleEnv.from_environ(), mask_env)
    return _fire(rule, subject, decoded, ctx, throttle)


def _fire(rule: Rule, subject: str, decoded: Message, ctx: Context,
          throttle: Throttle | None) -> Firing | None:
    message, raw = decoded.data, decoded.raw
    if rule.condition is not None:
        test = rule.predicate or compile_condition(rule.condition)
        if not isinstance(message, dict) or not test(ctx, MISSING):
            return None
    if throttle is not None and not throttle.allow((rule.id, subject), rule.throttle):
        return None
    try:
        actions = tuple(render_action(a, i, ctx, raw) for i, a in enumerate(rule.actions))
    except TemplateError as exc:
        raise TemplateError(f"rule {rule.name!r}: {exc}") from None
    return Firing(rule, subject, actions, raw)


def evaluate_many(rules: Iterable[Rule], subject: str, payload: bytes | str | Any, *,
                  now: datetime | None = None, env: Mapping[str, str] | None = None,
                  throttle: Throttle | None = None, indexed: bool = False,
                  ) -> tuple[list[Firing], list[tuple[Rule, RouterError]]]:
    """Evaluate several rules (e.g. `SubjectIndex.match(subject)`) on one message, decoding
    it once and building one context. `indexed`: the rules came from a SubjectIndex match,
    so their subject filters need no second check. Returns the firings and, separately,
    the rules that failed: actions that could not be rendered, or a regular expression
    past its time limit (one rule's error never stops the others)."""
    message = decode(payload)
    ctx = Context(message.data, subject, now or datetime.now(UTC),
                  env if env is not None else RuleEnv.from_environ(), False)
    firings: list[Firing] = []
    errors: list[tuple[Rule, RouterError]] = []
    for rule in rules:
        if not indexed and not subject_matches(rule.subject, subject):
            continue
        try:
            firing = _fire(rule, subject, message, ctx, throttle)
        except (TemplateError, RegexTimeout) as exc:
            errors.append((rule, exc))
            continue
        if firing is not None:
            firings.append(firing)
    return firings, errors


def render_action(action: PublishAction | WebhookAction, index: int, ctx: Context,
                  raw: bytes) -> Out:
    """Render one action; raises TemplateError naming the action."""
    try:
        if isinstance(action, PublishAction):
            return PublishOut(
                subject=render(action.subject, ctx),
                payload=raw if action.payload is None else encode(render(action.payload, ctx)),
                headers=_headers(action.headers, ctx) or None,
                index=index)
        headers = _headers(action.headers, ctx)
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = _content_type(action, ctx)
        url = render(action.url, ctx)
        has_env = any(p.env for p in action.url.placeholders)
        return WebhookOut(
            url=url, method=action.method, headers=headers,
            body=raw if action.body is None else encode(render(action.body, ctx)),
            timeout=action.timeout, attempts=action.attempts, backoff=action.backoff,
            safe_url=render(action.url, _masked(ctx)) if has_env else url,
            index=index)
    except TemplateError as exc:
        raise TemplateError(f"action {index + 1} ({action.kind}): {exc}") from None


def _masked(ctx: Context) -> Context:
    masked = replace(ctx, mask_env=True)
    masked._uuid = ctx.uuid
    return masked


def _headers(headers: tuple[tuple[str, Any], ...], ctx: Context) -> dict[str, str]:
    return {name: render(template, ctx) for name, template in headers}


def _content_type(action: WebhookAction, ctx: Context) -> str:
    if action.body is None:
        return "application/json" if ctx.message is not MISSING else "application/octet-stream"
    return "application/json" if action.body.kind == "json" else "text/plain; charset=utf-8"
