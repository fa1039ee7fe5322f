"""OTTL condition syntax: tokens and a syntax tree, with the column of every node for error messages.

The grammar is the boolean-expression part of the collector's OTTL (pkg/ottl LANGUAGE.md):
``or`` of ``and`` of optionally negated terms; a term is a comparison of two values, ``true``/``false``,
a converter call or a parenthesised condition; values are literals, paths with ``["key"]`` indexes,
enums, converter calls and ``+ - * /`` arithmetic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


class OttlSyntaxError(ValueError):
    """A condition that cannot be parsed or compiled; col is 1-based within the condition."""

    def __init__(self, message: str, col: int) -> None:
        super().__init__(f"column {col}: {message}")
        self.col = col
        self.reason = message


_TOKEN = re.compile(
    r"""\s*(?:
    (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<bytes>0x[0-9a-fA-F]+)
  | (?P<float>(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+)
  | (?P<int>[0-9]+)
  | (?P<op>==|!=|<=|>=|<|>)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[()\[\].,+\-*/{}:])
  | (?P<bad>\S)
    )""",
    re.X,
)
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}


@dataclass(frozen=True)
class Token:
    kind: str  # str bytes float int op ident punct end
    text: str
    col: int


def tokenize(text: str) -> list[Token]:
    out: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.lastgroup is None:  # only trailing blanks are left
            break
        kind = m.lastgroup
        col = m.start(kind) + 1
        if kind == "bad":
            what = m.group(kind)
            if what == '"':
                raise OttlSyntaxError("unterminated string", col)
            if what in "='!&|":
                raise OttlSyntaxError(f'unexpected "{what}" (OTTL compares with == != < <= > >= and joins with and, or, not)', col)
            raise OttlSyntaxError(f'unexpected character "{what}"', col)
        out.append(Token(kind, m.group(kind), col))
        pos = m.end()
    out.append(Token("end", "", len(text) + 1))
    return out


def unquote(s: str, col: int) -> str:
    body = s[1:-1]
    if "\\" not in body:
        return body
    out = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            nxt = body[i + 1] if i + 1 < len(body) else ""
            if nxt not in _ESCAPES:
                raise OttlSyntaxError(f"unknown escape \\{nxt} in string", col + i + 1)
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


# --- syntax tree ---


@dataclass
class Node:
    col: int


@dataclass
class Literal(Node):
    value: Any


@dataclass
class Path(Node):
    names: list[str]
    keys: list[str | int] = field(default_factory=list)

    def text(self) -> str:
        return ".".join(self.names) + "".join(f'["{k}"]' if isinstance(k, str) else f"[{k}]" for k in self.keys)


@dataclass
class Enum(Node):
    name: str


@dataclass
class Call(Node):
    name: str
    args: list[Node]


@dataclass
class Math(Node):
    op: str
    left: Node
    right: Node


@dataclass
class Negate(Node):
    value: Node


@dataclass
class Compare(Node):
    op: str
    left: Node
    right: Node


@dataclass
class BoolOp(Node):
    op: str  # "and" | "or"
    items: list[Node]


@dataclass
class Not(Node):
    value: Node


_ENUM = re.compile(r"^[A-Z][A-Z0-9_]*$")
_KEYWORDS = {"and", "or", "not"}


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = tokenize(text)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.toks[self.i]

    def take(self) -> Token:
        t = self.toks[self.i]
        self.i += 1
        return t

    def at(self, kind: str, text: str | None = None) -> bool:
        t = self.tok
        return t.kind == kind and (text is None or t.text == text)

    def expect(self, kind: str, text: str, what: str) -> Token:
        if not self.at(kind, text):
            raise OttlSyntaxError(f"expected {what}, got {self.describe(self.tok)}", self.tok.col)
        return self.take()

    @staticmethod
    def describe(t: Token) -> str:
        return "the end of the condition" if t.kind == "end" else f'"{t.text}"'

    def condition(self) -> Node:
        if self.at("end"):
            raise OttlSyntaxError("empty condition", 1)
        node = self.or_expr()
        if not self.at("end"):
            raise OttlSyntaxError(f"unexpected {self.describe(self.tok)} (expected and, or, or the end)", self.tok.col)
        return node

    def or_expr(self) -> Node:
        first = self.and_expr()
        items = [first]
        while self.at("ident", "or"):
            self.take()
            items.append(self.and_expr())
        return first if len(items) == 1 else BoolOp(first.col, "or", items)

    def and_expr(self) -> Node:
        first = self.term()
        items = [first]
        while self.at("ident", "and"):
            self.take()
            items.append(self.term())
        return first if len(items) == 1 else BoolOp(first.col, "and", items)

    def term(self) -> Node:
        if self.at("ident", "not"):
            col = self.take().col
            return Not(col, self.term())
        start = self.i
        col = self.tok.col
        try:
            left = self.math()
        except OttlSyntaxError:
            left = None
        if left is not None and self.at("op"):
            op = self.take().text
            right = self.math()
            return Compare(col, op, left, right)
        self.i = start
        if self.at("punct", "("):
            self.take()
            inner = self.or_expr()
            self.expect("punct", ")", '")"')
            return inner
        if self.at("ident", "true") or self.at("ident", "false"):
            return Literal(col, self.take().text == "true")
        if isinstance(left, Call):
            return self.math()  # the converter again: its value must be a boolean (checked when run)
        if isinstance(left, Path):
            raise OttlSyntaxError(f'"{left.text()}" alone is not a condition: compare it, e.g. {left.text()} != nil', col)
        if left is not None:
            self.math()
            raise OttlSyntaxError(f"expected a comparison operator, got {self.describe(self.tok)}", self.tok.col)
        self.math()  # raises the value's own syntax error
        raise OttlSyntaxError("expected a condition", col)

    def math(self) -> Node:
        left = self.product()
        while self.at("punct", "+") or self.at("punct", "-"):
            t = self.take()
            left = Math(t.col, t.text, left, self.product())
        return left

    def product(self) -> Node:
        left = self.unary()
        while self.at("punct", "*") or self.at("punct", "/"):
            t = self.take()
            left = Math(t.col, t.text, left, self.unary())
        return left

    def unary(self) -> Node:
        if self.at("punct", "-") or self.at("punct", "+"):
            t = self.take()
            v = self.unary()
            if t.text == "+":
                return v
            if isinstance(v, Literal) and isinstance(v.value, int | float) and not isinstance(v.value, bool):
                return Literal(t.col, -v.value)
            return Negate(t.col, v)
        return self.value()

    def value(self) -> Node:
        t = self.tok
        if t.kind == "str":
            self.take()
            return Literal(t.col, unquote(t.text, t.col))
        if t.kind == "int":
            self.take()
            return Literal(t.col, int(t.text))
        if t.kind == "float":
            self.take()
            return Literal(t.col, float(t.text))
        if t.kind == "bytes":
            self.take()
            hexs = t.text[2:]
            if len(hexs) % 2:
                raise OttlSyntaxError("a bytes literal needs an even number of hex digits", t.col)
            return Literal(t.col, bytes.fromhex(hexs))
        if t.kind == "punct" and t.text == "(":
            self.take()
            inner = self.math()
            self.expect("punct", ")", '")"')
            return inner
        if t.kind == "punct" and t.text in "[{":
            raise OttlSyntaxError("list and map literals are not supported by gotel's OTTL", t.col)
        if t.kind != "ident" or t.text in _KEYWORDS:
            raise OttlSyntaxError(f"expected a value, got {self.describe(t)}", t.col)
        self.take()
        if t.text in ("true", "false"):
            return Literal(t.col, t.text == "true")
        if t.text == "nil":
            return Literal(t.col, None)
        if self.at("punct", "("):
            return self.call(t)
        if _ENUM.match(t.text) and not self.at("punct", ".") and not self.at("punct", "["):
            return Enum(t.col, t.text)
        names = [t.text]
        while self.at("punct", "."):
            self.take()
            n = self.tok
            if n.kind != "ident":
                raise OttlSyntaxError(f"expected a path segment after \".\", got {self.describe(n)}", n.col)
            names.append(self.take().text)
        if self.at("punct", "("):
            raise OttlSyntaxError(f'"{".".join(names)}" is not a function: converters start with a capital letter', t.col)
        keys: list[str | int] = []
        while self.at("punct", "["):
            self.take()
            k = self.tok
            if k.kind == "str":
                keys.append(unquote(k.text, k.col))
            elif k.kind == "int":
                keys.append(int(k.text))
            else:
                raise OttlSyntaxError(f"expected a string or integer key, got {self.describe(k)}", k.col)
            self.take()
            self.expect("punct", "]", '"]"')
        return Path(t.col, names, keys)

    def call(self, name: Token) -> Node:
        if not name.text[0].isupper():
            raise OttlSyntaxError(f'"{name.text}" is an editor (a function that changes data): conditions call only '
                                  "converters, whose names start with a capital letter", name.col)
        self.expect("punct", "(", '"("')
        args: list[Node] = []
        if not self.at("punct", ")"):
            while True:
                args.append(self.math())
                if self.at("punct", ","):
                    self.take()
                    continue
                break
        self.expect("punct", ")", '"," or ")"')
        if self.at("punct", "["):
            raise OttlSyntaxError("indexing a converter's result is not supported by gotel's OTTL", self.tok.col)
        return Call(name.col, name.text, args)


def parse(text: str) -> Node:
    """The syntax tree of one condition; OttlSyntaxError (with its column) when it does not parse."""
    return _Parser(text).condition()
