r"""`match` expressions: a tokenizer and a recursive-descent parser (no eval).

    expr       := or
    or         := and ( "or" and )*
    and        := not ( "and" not )*
    not        := "not" not | "(" expr ")" | comparison
    comparison := operand ( ("=="|"!="|">"|">="|"<"|"<=") operand
                          | "not"? ("in" | "contains") operand
                          | "not"? "exists"
                          | "matches" STRING
                          | ("any"|"all"|"none") ( "(" expr ")" | literal ) )
    operand    := PATH | @VARIABLE | NUMBER | STRING | true | false | null | list
    list       := "[" ( literal ( "," literal )* )? "]"

Paths: `a.b.c`, `disks[0].free_percent`, `labels["app.name"]`, `items.0`. Only `not`,
`true`, `false` and `null` are reserved as field names; other words are operators only
where an operator is expected. Strings take single or double quotes and the escapes
\\ \' \" \n \r \t \b \f \/ \uXXXX. `x any (expr)` tests `expr` against each element
of the array `x` (paths inside are relative to the element); `x any 5` compares each
element with 5. A literal on the left is allowed when the right side is a field and the
operator can be mirrored (`90 < cpu` becomes `cpu > 90`, `'a' in tags` becomes
`tags contains 'a'`). The result is the same condition tree the structured form builds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from rule_router.errors import ExpressionError, TemplateSyntaxError
from rule_router.model import Condition, Group, Node, scan_ref
from rule_router.operators import compile_regex

MAX_DEPTH = 64
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "r": "\r", "t": "\t", "b": "\b",
            "f": "\f", "/": "/"}
_CMP = {"==": "eq", "!=": "neq", ">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}
_MIRROR = {"eq": "eq", "neq": "neq", "gt": "lt", "gte": "lte", "lt": "gt", "lte": "gte",
           "in": "contains", "not_in": "not_contains", "contains": "in",
           "not_contains": "not_in"}
_LITERAL_WORDS = {"true": True, "false": False, "null": None}
_MISTAKES = {"=": "use '==' to compare", "!": "use '!=' or 'not'", "&": "use 'and'",
             "|": "use 'or'"}


@dataclass(frozen=True)
class Token:
    kind: str  # NUM STR REF OP ( ) [ ] , EOF
    value: Any
    pos: int

    @property
    def word(self) -> str | None:
        """The bare word of a one-part, non-variable path (keywords are such words)."""
        if self.kind == "REF" and not self.value.var and len(self.value.parts) == 1:
            return str(self.value.parts[0])
        return None


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "()[],":
            tokens.append(Token(ch, ch, i))
            i += 1
        elif text.startswith(("==", "!=", ">=", "<="), i):
            tokens.append(Token("OP", text[i:i + 2], i))
            i += 2
        elif ch in "<>":
            tokens.append(Token("OP", ch, i))
            i += 1
        elif ch in "'\"":
            value, i2 = _string(text, i)
            tokens.append(Token("STR", value, i))
            i = i2
        elif ch.isascii() and (ch.isdigit() or (ch == "-" and i + 1 < len(text)
                                                and text[i + 1].isdigit())):
            m = _NUMBER.match(text, i)
            assert m is not None
            tokens.append(Token("NUM", _number(m.group(), i), i))
            i = m.end()
        elif ch == "@" or ch == "_" or (ch.isascii() and ch.isalpha()):
            try:
                ref, i2 = scan_ref(text, i)
            except TemplateSyntaxError as exc:
                raise ExpressionError(exc.message, exc.offset + 1) from None
            tokens.append(Token("REF", ref, i))
            i = i2
        else:
            hint = _MISTAKES.get(ch, "")
            raise ExpressionError(f"unexpected character {ch!r}" + (f": {hint}" if hint else ""),
                                  i + 1)
    tokens.append(Token("EOF", None, len(text)))
    return tokens


def _number(text: str, pos: int) -> int | float:
    try:
        value: int | float = float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise ExpressionError("number too long", pos + 1) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ExpressionError("number out of range", pos + 1)
    return value


def _string(text: str, start: int) -> tuple[str, int]:
    quote, out, i = text[start], [], start + 1
    while i < len(text):
        ch = text[i]
        if ch == quote:
            return "".join(out), i + 1
        if ch == "\\":
            nxt = text[i + 1:i + 2]
            if nxt == "u" and _HEX4.fullmatch(text, i + 2, i + 6):
                code = int(text[i + 2:i + 6], 16)
                i += 6
                low = text[i + 2:i + 6] if text.startswith("\\u", i) else ""
                if 0xD800 <= code < 0xDC00 and _HEX4.fullmatch(low) and \
                        0xDC00 <= int(low, 16) < 0xE000:  # a UTF-16 surrogate pair
                    code = 0x10000 + ((code - 0xD800) << 10) + (int(low, 16) - 0xDC00)
                    i += 6
                out.append(chr(code))
                continue
            if nxt not in _ESCAPES:
                raise ExpressionError(f"unknown escape '\\{nxt}' in string", i + 1)
            out.append(_ESCAPES[nxt])
            i += 2
            continue
        out.append(ch)
        i += 1
    raise ExpressionError("unterminated string", start + 1)


def parse_expression(text: str) -> Node:
    """Parse a `match` expression into a condition tree. Raises ExpressionError only."""
    if not isinstance(text, str):
        raise ExpressionError("an expression must be a string", 1)
    parser = _Parser(tokenize(text))
    if parser.peek.kind == "EOF":
        raise ExpressionError("empty expression", 1)
    node = parser.expr()
    tok = parser.peek
    if tok.kind != "EOF":
        raise ExpressionError(f"unexpected {_describe(tok)}: expected 'and', 'or' or the end",
                              tok.pos + 1)
    return node


def _describe(tok: Token) -> str:
    if tok.kind == "EOF":
        return "end of expression"
    if tok.kind == "REF":
        return repr(tok.value.text)
    return repr(tok.value) if tok.kind in ("STR", "NUM", "OP") else repr(tok.kind)


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    @property
    def peek(self) -> Token:
        return self.tokens[self.i]

    def next(self) -> Token:
        tok = self.tokens[self.i]
        if tok.kind != "EOF":
            self.i += 1
        return tok

    def accept_word(self, *words: str) -> Token | None:
        if self.peek.word in words:
            return self.next()
        return None

    def expect(self, kind: str, what: str) -> Token:
        tok = self.peek
        if tok.kind != kind:
            raise ExpressionError(f"expected {what}, found {_describe(tok)}", tok.pos + 1)
        return self.next()

    def expr(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExpressionError("expression nested too deeply", self.peek.pos + 1)
        node = self._chain("or", self.and_)
        self.depth -= 1
        return node

    def _chain(self, word: str, sub: Any) -> Node:
        items = [sub()]
        while self.accept_word(word):
            items.append(sub())
        return items[0] if len(items) == 1 else Group(word, tuple(items))

    def and_(self) -> Node:
        return self._chain("and", self.not_)

    def not_(self) -> Node:
        if self.accept_word("not"):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ExpressionError("expression nested too deeply", self.peek.pos + 1)
            node = Group("not", (self.not_(),))
            self.depth -= 1
            return node
        if self.peek.kind == "(":
            self.next()
            node = self.expr()
            self.expect(")", "')'")
            return node
        return self.comparison()

    def operand(self) -> tuple[str, Any, Token]:
        """("field", FieldRef) or ("literal", value)."""
        tok = self.peek
        if tok.kind in ("NUM", "STR"):
            self.next()
            return "literal", tok.value, tok
        if tok.kind == "[":
            return "literal", self.list_(), tok
        if tok.kind == "REF":
            self.next()
            if tok.word in _LITERAL_WORDS:
                return "literal", _LITERAL_WORDS[tok.word], tok
            if tok.word == "not":
                raise ExpressionError("'not' cannot be used as a field name", tok.pos + 1)
            return "field", tok.value, tok
        raise ExpressionError(f"expected a field or a value, found {_describe(tok)}",
                              tok.pos + 1)

    def list_(self) -> tuple[Any, ...]:
        self.expect("[", "'['")
        items: list[Any] = []
        if self.peek.kind == "]":
            self.next()
            return ()
        while True:
            kind, value, tok = self.operand()
            if kind != "literal":
                raise ExpressionError("a list holds only literal values", tok.pos + 1)
            items.append(value)
            if self.peek.kind == "]":
                self.next()
                return tuple(items)
            self.expect(",", "',' or ']'")

    def comparison(self) -> Node:
        lkind, left, ltok = self.operand()
        tok = self.peek
        negated = False
        if tok.kind == "OP":
            self.next()
            op = _CMP[tok.value]
        else:
            if self.accept_word("not"):
                negated = True
            word_tok = self.peek
            word = word_tok.word
            allowed = ("in", "contains", "exists") if negated else (
                "in", "contains", "exists", "matches", "any", "all", "none")
            if word not in allowed:
                found = _describe(word_tok)
                want = "'in', 'contains' or 'exists' after 'not'" if negated else (
                    "a comparison operator (==, !=, >, >=, <, <=, in, contains, exists, "
                    "matches, any, all, none)")
                raise ExpressionError(f"expected {want}, found {found}", word_tok.pos + 1)
            self.next()
            op = ("not_" + word) if negated else word
        if lkind != "field":
            return self._mirrored(op, left, ltok)
        if op in ("exists", "not_exists"):
            return Condition(left, op)
        if op == "matches":
            return Condition(left, "regex", self._regex())
        if op in ("any", "all", "none"):
            if self.peek.kind == "(":
                self.next()
                sub = self.expr()
                self.expect(")", "')'")
                return Condition(left, op, sub)
        rkind, right, rtok = self.operand()
        if op in ("any", "all", "none") and rkind != "literal":
            raise ExpressionError(f"'{op}' takes a literal or a parenthesised condition",
                                  rtok.pos + 1)
        return Condition(left, op, right)

    def _mirrored(self, op: str, left: Any, ltok: Token) -> Node:
        if op not in _MIRROR:
            raise ExpressionError(f"the left side of {op!r} must be a field", ltok.pos + 1)
        rkind, right, rtok = self.operand()
        if rkind != "field":
            raise ExpressionError("a comparison needs a field on one side", rtok.pos + 1)
        return Condition(right, _MIRROR[op], left)

    def _regex(self) -> Any:
        tok = self.expect("STR", "a quoted regular expression after 'matches'")
        try:
            return compile_regex(tok.value)
        except ValueError as exc:
            raise ExpressionError(f"invalid regular expression: {exc}", tok.pos + 1) from None

