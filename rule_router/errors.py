"""The rule router's exceptions: a shallow tree; library errors are converted at the boundary.

    RouterError
    ├── RuleError            a rule (YAML row or file) is invalid; carries the 1-based line
    ├── ExpressionError      a `match` expression does not parse; carries the 1-based column
    ├── TemplateSyntaxError  a template is malformed; carries the 0-based offset in its text
    ├── TemplateError        a template cannot be rendered for this message (runtime, counted)
    ├── ActionError          an action could not be handed to NATS (runtime, counted)
    └── EgressRefused        a webhook's address is not one it may reach (never retried)

`ExpressionError` and `TemplateSyntaxError` are raised by the pure sub-parsers; `parse.py`
converts them into a `RuleError` that names the YAML line.
"""

from __future__ import annotations


class RouterError(Exception):
    """Base of everything the rule router raises on purpose."""


class RuleError(RouterError):
    """A rule is invalid. `line` is the 1-based YAML line of the offending key or value."""

    def __init__(self, message: str, line: int | None = None, source: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.source = source

    @property
    def row_message(self) -> str:
        """The text written to a PocketBase row's `error` field: `line N: message`."""
        return f"line {self.line}: {self.message}" if self.line else self.message

    def __str__(self) -> str:
        where = self.source
        if self.line:
            where = f"{where}:{self.line}" if where else f"line {self.line}"
        return f"{where}: {self.message}" if where else self.message


class ExpressionError(RouterError):
    """A `match` expression is malformed. `column` is 1-based within the expression."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"{message} (column {column})")
        self.message = message
        self.column = column


class TemplateSyntaxError(RouterError):
    """A template is malformed or names an unknown variable. `offset` is 0-based."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


class TemplateError(RouterError):
    """A template cannot be rendered for one message: a missing field or environment
    variable, or a result that is not a valid NATS subject. Counted by the caller."""


class RegexTimeout(RouterError):
    """A `regex`/`matches` condition ran past its time limit on one message (a pattern
    with catastrophic backtracking); the condition counts as not matched."""


class ActionError(RouterError):
    """An action failed in a way its caller must handle (e.g. NATS refused the publish)."""


class EgressRefused(RouterError):
    """A webhook would connect to an address the router may not reach (loopback, private,
    metadata, ...; see `rule_router.addresses`). Retrying cannot help, so it is not retried.
    Deliberately not an httpcore/httpx exception: it passes through them unchanged."""
