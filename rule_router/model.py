"""The compiled rule model: what both YAML forms turn into, and what evaluation produces.

A field reference is a path into the message (`disks[0].free_percent`) or a variable
(`@subject.1`, `@time.hour`). A condition tree is made of `Condition` leaves and `Group`
nodes (`and`, `or`, `not` — `not` negates the AND of its items). Rendered actions
(`PublishOut`, `WebhookOut`) are plain data, handed to `rule_router.actions`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from rule_router.errors import TemplateSyntaxError

if TYPE_CHECKING:
    from rule_router.templates import Template

DEFAULT_SUBJECT = "agents.*.telemetry.>"

# Bounds of a webhook action. A rule is written by a tenant admin and every attempt holds a
# slot of the router's shared concurrency, so one rule may cost at most
# MAX_ATTEMPTS * MAX_TIMEOUT seconds of calls plus waits of at most MAX_BACKOFF each.
MAX_TIMEOUT = 30.0  # seconds per attempt, connect to last byte read
MAX_ATTEMPTS = 10  # `retries`: attempts in total
MAX_BACKOFF = 30.0  # seconds: the first wait (`backoff`) and the cap of the doubled waits

# Headers a webhook action may not set: they frame the request or choose where it goes, and
# the HTTP client owns them. `Host` would let a rule aimed at a public ingress address reach
# the internal virtual hosts behind it; the framing ones could smuggle a second request.
WEBHOOK_RESERVED_HEADERS = frozenset(("host", "content-length", "transfer-encoding",
                                      "connection", "upgrade", "te", "trailer", "keep-alive"))


def reserved_webhook_header(name: str) -> bool:
    """True for a header name (any case) a webhook action may not set: the ones above and
    every `Proxy-*`."""
    lower = name.lower()
    return lower in WEBHOOK_RESERVED_HEADERS or lower.startswith("proxy-")


class _Missing:
    """The value of a path that is not in the message (distinct from JSON null)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_INT = re.compile(r"-?[0-9]{1,9}(?![0-9])")


@dataclass(frozen=True)
class FieldRef:
    """`text` as written; `parts` are keys (str) and indexes (int). A variable's first part
    is its name without `@` (`subject`, `time`, ...) and `var` is true."""

    text: str
    parts: tuple[str | int, ...]
    var: bool = False

    def __str__(self) -> str:
        return self.text


def scan_ref(text: str, pos: int = 0) -> tuple[FieldRef, int]:
    """Scan a field path or `@variable` starting at `pos`; return it and the end offset.

    Grammar: `@`? ident ( `.` ident | `.` int | `[` int `]` | `[` quoted-string `]` )*.
    Raises TemplateSyntaxError(message, offset)."""
    start = pos
    var = text.startswith("@", pos)
    if var:
        pos += 1
    m = _IDENT.match(text, pos)
    if not m:
        raise TemplateSyntaxError("expected a field name", pos)
    parts: list[str | int] = [m.group()]
    pos = m.end()
    while pos < len(text):
        ch = text[pos]
        if ch == ".":
            m = _IDENT.match(text, pos + 1) or _INT.match(text, pos + 1)
            if not m:
                raise TemplateSyntaxError("expected a name or index after '.'", pos + 1)
            g = m.group()
            parts.append(int(g) if _INT.fullmatch(g) else g)
            pos = m.end()
        elif ch == "[" and not var:
            pos, part = _scan_bracket(text, pos + 1)
            parts.append(part)
        else:
            break
    return FieldRef(text[start:pos], tuple(parts), var), pos


def _scan_bracket(text: str, pos: int) -> tuple[int, str | int]:
    m = _INT.match(text, pos)
    if m:
        part: str | int = int(m.group())
        pos = m.end()
    elif pos < len(text) and text[pos] in "'\"":
        quote, chars, pos = text[pos], [], pos + 1
        while pos < len(text) and text[pos] != quote:
            if text[pos] == "\\" and pos + 1 < len(text):
                pos += 1
            chars.append(text[pos])
            pos += 1
        if pos >= len(text):
            raise TemplateSyntaxError("unterminated string in '[...]'", pos)
        part, pos = "".join(chars), pos + 1
    else:
        raise TemplateSyntaxError("expected an index or a quoted key after '['", pos)
    if not text.startswith("]", pos):
        raise TemplateSyntaxError("expected ']'", pos)
    return pos + 1, part


def parse_ref(text: str) -> FieldRef:
    """Parse a whole string as one reference (raises TemplateSyntaxError)."""
    ref, end = scan_ref(text, 0)
    if end != len(text):
        raise TemplateSyntaxError(f"unexpected {text[end]!r} in field path", end)
    return ref


def resolve_path(obj: Any, parts: tuple[str | int, ...]) -> Any:
    """Walk `parts` into a decoded JSON value; MISSING when any step is absent.
    An int part indexes a list (negative from the end) or is a string key of an object."""
    for part in parts:
        if isinstance(obj, dict):
            key = str(part)
            if key not in obj:
                return MISSING
            obj = obj[key]
        elif isinstance(obj, list | tuple) and isinstance(part, int):
            if not -len(obj) <= part < len(obj):
                return MISSING
            obj = obj[part]
        else:
            return MISSING
    return obj


# ----------------------------------------------------------------------------- conditions

@dataclass(frozen=True)
class Condition:
    """A leaf: `operator` (a key of `operators.OPERATORS`) applied to the value at `field`.

    `value` is a literal (lists are tuples), a FieldRef (compare with another field), a
    compiled `re.Pattern` for `regex`, or for any/all/none either a `Group` evaluated
    against each element or a literal each element is compared with (eq)."""

    field: FieldRef
    operator: str
    value: Any = None


@dataclass(frozen=True)
class Group:
    """`and` / `or` over `items`; `not` is the negation of the AND of `items`."""

    operator: str
    items: tuple[Node, ...]


Node = Condition | Group


# ----------------------------------------------------------------------------- rules

@dataclass(frozen=True)
class PublishAction:
    """Publish to NATS. `payload` None means: pass the original message through."""

    subject: Template
    payload: Template | None = None
    headers: tuple[tuple[str, Template], ...] = ()
    line: int = 0
    kind: ClassVar[str] = "publish"


@dataclass(frozen=True)
class WebhookAction:
    """POST (or `method`) to `url`. `body` None means: send the original message.
    `attempts` counts the first try; waits start at `backoff` seconds and double."""

    url: Template
    method: str = "POST"
    headers: tuple[tuple[str, Template], ...] = ()
    body: Template | None = None
    timeout: float = 10.0
    attempts: int = 3
    backoff: float = 0.5
    line: int = 0
    kind: ClassVar[str] = "webhook"


Action = PublishAction | WebhookAction


@dataclass(frozen=True)
class RuleWarning:
    """Something to tell the rule's author that does not make the rule invalid."""

    message: str
    line: int = 0

    @property
    def row_message(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


@dataclass(frozen=True)
class Rule:
    """One compiled rule. `id` is `<source>#<index>`: stable across reloads of the same row,
    so throttle windows survive an edit. `condition` None means: always true."""

    id: str
    name: str
    subject: str
    condition: Node | None
    actions: tuple[Action, ...]
    throttle: float | None = None
    line: int = 1
    source: str = ""
    match: str | None = None
    warnings: tuple[RuleWarning, ...] = ()
    # `condition` compiled (predicates.compile_condition); set by the parser
    predicate: Callable[[Any, Any], bool] | None = field(default=None, compare=False,
                                                         repr=False)


# ----------------------------------------------------------------------------- outputs

@dataclass(frozen=True)
class PublishOut:
    """A rendered publish, ready for `nc.publish(subject, payload, headers=headers)`."""

    subject: str
    payload: bytes
    headers: Mapping[str, str] | None = None
    index: int = 0
    kind: ClassVar[str] = "publish"


@dataclass(frozen=True)
class WebhookOut:
    """A rendered webhook call. `safe_url` is `url` with `${ENV}` values masked (for logs
    and dead letters)."""

    url: str
    method: str
    headers: Mapping[str, str]
    body: bytes
    timeout: float = 10.0
    attempts: int = 3
    backoff: float = 0.5
    safe_url: str = ""
    index: int = 0
    kind: ClassVar[str] = "webhook"


Out = PublishOut | WebhookOut


@dataclass(frozen=True)
class Firing:
    """A rule that matched one message: its rendered actions and the original payload."""

    rule: Rule
    subject: str
    actions: tuple[Out, ...]
    payload: bytes = b""


@dataclass(frozen=True)
class WebhookResult:
    """Outcome of a webhook after retries: `ok` for a 2xx; else `error` says why."""

    ok: bool
    attempts: int
    status: int | None = None
    error: str | None = None
    elapsed: float = 0.0
