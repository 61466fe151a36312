"""Templates: `{field.path}`, `{@variable}` and `${ENV}` placeholders in action strings.

Placeholder syntax: `{` immediately followed by a letter, `_` or `@` opens a placeholder,
which must be one field path or variable and close with `}`; any other `{` or `}` is
literal text (so JSON object braces need no escaping). `${NAME}` reads the environment
when the action is rendered, and only names listed in CAIRN_ROUTER_ENV_ALLOW
(`rule_router.environment`): an unlisted name is an error, never a value.

Variables: `@subject`, `@subject.N` (0-based token; negative counts from the end),
`@timestamp` (RFC 3339 UTC), `@time.year|month|day|hour|minute|second|weekday`
(UTC; weekday 1 = Monday … 7 = Sunday), `@uuid` (a UUID4, the same for every action of one firing).

How a value is inserted depends on the template's kind:
- `json` (a payload/body that is JSON once its placeholders are filled): a placeholder
  inside a JSON string literal gets the JSON-escaped text of the value (a non-string
  value as its JSON text); a placeholder outside strings gets the JSON encoding of the
  value (strings quoted, numbers as numbers, objects as objects). `${ENV}` values are
  strings under the same rule. The result is always valid JSON.
- `text` (a payload that is not JSON, and header values): strings raw, other values as
  JSON text; header values must not contain line breaks.
- `url`: field values are percent-encoded; `${ENV}` values are inserted raw (so a base
  URL can come from the environment).
- `subject`: strings raw, numbers/bools/null as JSON text, objects and arrays refused; the
  result must be a valid concrete NATS subject (no whitespace, empty tokens, wildcards).
A missing field, an unlisted or unset environment variable at render time raises
TemplateError.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from rule_router.environment import env_allows, env_problem, not_allowed, not_set
from rule_router.errors import TemplateError, TemplateSyntaxError
from rule_router.model import MISSING, FieldRef, resolve_path, scan_ref
from rule_router.subjects import subject_error

KINDS = ("json", "text", "url", "subject", "header", "payload")
TIME_PARTS = ("year", "month", "day", "hour", "minute", "second", "weekday")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MASK = "***"


@dataclass(slots=True)
class Context:
    """What a template or condition can see: the decoded message (MISSING when it is not
    JSON), the concrete subject, the clock and the environment."""

    message: Any
    subject: str
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    env: Mapping[str, str] = field(default_factory=dict)
    mask_env: bool = False
    _tokens: list[str] | None = field(default=None, init=False, repr=False)
    _uuid: str | None = field(default=None, init=False, repr=False)

    @property
    def tokens(self) -> list[str]:
        if self._tokens is None:  # most messages never need them
            self._tokens = self.subject.split(".")
        return self._tokens

    @property
    def uuid(self) -> str:
        """One UUID per context, so every action of one firing shares it."""
        if self._uuid is None:
            self._uuid = str(uuid.uuid4())
        return self._uuid


def check_variable(ref: FieldRef, subject_filter: str | None = None) -> None:
    """Raise TemplateSyntaxError for an unknown `@variable` or a subject token index that the
    rule's subject filter can never have."""
    name, rest = ref.parts[0], ref.parts[1:]
    if name == "subject":
        if not rest:
            return
        if len(rest) != 1 or not isinstance(rest[0], int):
            raise TemplateSyntaxError(f"@{ref.text[1:]}: use @subject or @subject.N")
        if subject_filter is not None:
            tokens = subject_filter.split(".")
            idx, open_ended = rest[0], tokens[-1] == ">"
            fixed = len(tokens) - 1 if open_ended else len(tokens)
            if (idx >= fixed and not open_ended) or (idx < 0 and not open_ended
                                                      and -idx > fixed):
                raise TemplateSyntaxError(
                    f"{ref.text}: subject filter {subject_filter!r} has only {fixed} tokens")
        return
    if name == "time" and len(rest) == 1 and rest[0] in TIME_PARTS:
        return
    if name in ("timestamp", "uuid") and not rest:
        return
    raise TemplateSyntaxError(
        f"unknown variable {ref.text!r} (known: @subject, @subject.N, @timestamp, "
        f"@time.{'|'.join(TIME_PARTS)}, @uuid)")


def resolve(ref: FieldRef, ctx: Context, root: Any = MISSING) -> Any:
    """The value of a field (in `root`, default the message) or variable; MISSING if absent."""
    if not ref.var:
        return resolve_path(ctx.message if root is MISSING else root, ref.parts)
    name, rest = ref.parts[0], ref.parts[1:]
    if name == "subject":
        if not rest:
            return ctx.subject
        idx = rest[0]
        if len(rest) != 1 or not isinstance(idx, int):
            return MISSING
        return ctx.tokens[idx] if -len(ctx.tokens) <= idx < len(ctx.tokens) else MISSING
    if name == "timestamp":
        return ctx.now.astimezone(UTC).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z")
    if name == "uuid":
        return ctx.uuid
    if name != "time" or len(rest) != 1 or rest[0] not in TIME_PARTS:
        return MISSING  # unknown variables are rejected at parse time
    now = ctx.now.astimezone(UTC)
    return now.isoweekday() if rest[0] == "weekday" else getattr(now, str(rest[0]))


@dataclass(frozen=True)
class Placeholder:
    ref: FieldRef | None  # a field or variable
    env: str | None  # or an environment variable
    in_string: bool  # inside a JSON string literal (json kind only)
    offset: int

    @property
    def text(self) -> str:
        return f"${{{self.env}}}" if self.env else f"{{{self.ref}}}"


@dataclass(frozen=True)
class Template:
    text: str
    kind: str
    parts: tuple[str | Placeholder, ...]

    @property
    def placeholders(self) -> list[Placeholder]:
        return [p for p in self.parts if isinstance(p, Placeholder)]


def compile_template(text: str, kind: str, subject_filter: str | None = None,
                     env: Mapping[str, str] | None = None) -> Template:
    """Compile and validate a template. `kind` "payload" picks "json" or "text" from the
    content. With `env` (a RuleEnv, or a plain mapping of every visible name), a `${NAME}`
    it does not allow, or (RuleEnv.require_set) that is unset, is an error.
    Raises TemplateSyntaxError."""
    if kind not in KINDS:
        raise ValueError(f"unknown template kind {kind!r}")
    parts = _scan(text)
    for p in parts:
        if isinstance(p, Placeholder):
            if p.ref is not None and p.ref.var:
                try:
                    check_variable(p.ref, subject_filter)
                except TemplateSyntaxError as exc:
                    raise TemplateSyntaxError(exc.message, p.offset) from None
            problem = None if p.env is None or env is None else env_problem(env, p.env)
            if problem:
                raise TemplateSyntaxError(problem, p.offset)
    if kind in ("payload", "json"):
        parts, kind = _json_or_text(text, parts, kind)
    elif kind == "subject":
        dummy = "".join(p if isinstance(p, str) else "x" for p in parts)
        problem = subject_error(dummy)
        if problem:
            raise TemplateSyntaxError(problem.replace(repr(dummy), repr(text)))
    return Template(text, kind, tuple(parts))


def _scan(text: str) -> list[str | Placeholder]:
    parts: list[str | Placeholder] = []
    buf: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "$" and text.startswith("{", i + 1):
            m = _ENV_NAME.match(text, i + 2)
            if not m or not text.startswith("}", m.end()):
                raise TemplateSyntaxError("malformed ${NAME}: expected a variable name and '}'",
                                          i)
            parts.append("".join(buf))
            buf = []
            parts.append(Placeholder(None, m.group(), False, i))
            i = m.end() + 1
        elif ch == "{" and i + 1 < len(text) and (text[i + 1].isalpha() or text[i + 1] in "_@"):
            ref, end = scan_ref(text, i + 1)
            if not text.startswith("}", end):
                raise TemplateSyntaxError(f"expected '}}' to close the placeholder {{{ref}",
                                          end)
            parts.append("".join(buf))
            buf = []
            parts.append(Placeholder(ref, None, False, i))
            i = end + 1
        else:
            buf.append(ch)
            i += 1
    parts.append("".join(buf))
    return [p for p in parts if p != ""]


def _json_or_text(text: str, parts: list[str | Placeholder],
                  kind: str) -> tuple[list[str | Placeholder], str]:
    """Mark placeholders inside JSON strings; decide json vs text by a dry render."""
    marked: list[str | Placeholder] = []
    in_str = escaped = False
    for p in parts:
        if isinstance(p, Placeholder):
            marked.append(Placeholder(p.ref, p.env, in_str, p.offset))
            escaped = False
            continue
        marked.append(p)
        for ch in p:
            if escaped:
                escaped = False
            elif ch == "\\" and in_str:
                escaped = True
            elif ch == '"':
                in_str = not in_str
    dummy = "".join(p if isinstance(p, str) else ("x" if p.in_string else "null")
                    for p in marked)
    try:
        json.loads(dummy)
        return marked, "json"
    except ValueError as exc:
        if kind == "json" or dummy.lstrip()[:1] in ("{", "["):
            raise TemplateSyntaxError(f"payload is not valid JSON: {exc}") from None
    return parts, "text"


def render(template: Template, ctx: Context) -> str:
    """Fill the placeholders. Raises TemplateError for missing values or a bad subject."""
    out: list[str] = []
    for p in template.parts:
        if isinstance(p, str):
            out.append(p)
            continue
        if p.env is not None:
            if not env_allows(ctx.env, p.env):
                raise TemplateError(not_allowed(p.env))
            if ctx.mask_env:
                value: Any = MASK
            elif p.env in ctx.env:
                value = ctx.env[p.env]
            else:
                raise TemplateError(not_set(p.env))
        else:
            assert p.ref is not None
            value = resolve(p.ref, ctx)
            if value is MISSING:
                what = "variable" if p.ref.var else "field"
                raise TemplateError(f"{what} {p.ref.text!r} is missing in the message")
        out.append(_format(template.kind, p, value))
    result = "".join(out)
    if template.kind == "subject":
        problem = subject_error(result)
        if problem:
            raise TemplateError(f"rendered subject is invalid: {problem}")
    elif template.kind == "header" and ("\n" in result or "\r" in result):
        raise TemplateError("rendered header value contains a line break")
    return result


def _format(kind: str, p: Placeholder, value: Any) -> str:
    if kind == "json":
        if p.in_string:
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            return json.dumps(text, ensure_ascii=False)[1:-1]
        return json.dumps(value, ensure_ascii=False)
    if kind == "subject" and isinstance(value, dict | list):
        raise TemplateError(f"cannot put an object or array ({p.text}) into a subject")
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if kind == "url" and p.env is None:
        return quote(text, safe="")
    return text


def encode(text: str) -> bytes:
    """UTF-8, with lone surrogates (from `\\ud800` in a message) written as JSON escapes."""
    return text.encode("utf-8", errors="backslashreplace")
