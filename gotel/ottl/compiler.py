"""Compiles an OTTL condition's syntax tree into a Python closure for one context.

Comparison, arithmetic and converter semantics follow the collector's pkg/ottl: values of different
types are never equal (``!=`` is true, ordering is false), ints and floats compare numerically, nil
equals only nil, and a runtime problem (Len of a number, a division by zero) is an OttlRuntimeError
that the caller's error_mode decides about.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable
from typing import Any

from gotel.config.duration import parse_duration
from gotel.ottl import contexts as cx
from gotel.ottl.grammar import (
    BoolOp,
    Call,
    Compare,
    Enum,
    Literal,
    Math,
    Negate,
    Node,
    Not,
    OttlSyntaxError,
    Path,
)
from gotel.pdata.batch import value_of

Getter = Callable[[cx.Item], Any]


class OttlRuntimeError(Exception):
    """A condition could not be evaluated for one item (the collector's OTTL error)."""


# --- comparison ---


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool | cx.Time | cx.Duration)


def _ordered(a: Any, b: Any, op: str) -> bool:
    if op == "==":
        return bool(a == b)
    if op == "!=":
        return bool(a != b)
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}
_SWAPPED = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


def compare(a: Any, b: Any, op: str) -> bool:
    if a is None and b is None:
        return op in ("==", "<=", ">=")
    if a is None:
        a, b = b, None
    if isinstance(a, bool):
        return _ordered(a, b, op) if isinstance(b, bool) else op == "!="
    if isinstance(a, cx.Time | cx.Duration):
        return _ordered(int(a), int(b), op) if type(b) is type(a) else op == "!="
    if _is_num(a):
        return _ordered(a, b, op) if _is_num(b) else op == "!="
    if isinstance(a, str):
        return _ordered(a, b, op) if isinstance(b, str) else op == "!="
    if isinstance(a, bytes):
        return _ordered(a, b, op) if isinstance(b, bytes) else op == "!="
    if isinstance(a, dict | list):
        if type(a) is type(b) and op in ("==", "!="):
            return (a == b) == (op == "==")
        return op == "!="
    return (a == b) if op == "==" else op == "!="


# --- arithmetic ---

_PLAIN_ARITH: dict[str, Callable[[Any, Any], Any]] = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _arith(x: Any, op: str, y: Any) -> Any:
    if isinstance(x, cx.Time) and isinstance(y, cx.Time) and op == "-":
        return cx.Duration(int(x) - int(y))
    if isinstance(x, cx.Time) and isinstance(y, cx.Duration) and op in "+-":
        return cx.Time(int(x) + int(y) if op == "+" else int(x) - int(y))
    if isinstance(x, cx.Duration) and isinstance(y, cx.Duration) and op in "+-":
        return cx.Duration(int(x) + int(y) if op == "+" else int(x) - int(y))
    if not (_is_num(x) and _is_num(y)):
        raise OttlRuntimeError(f"cannot compute {_type(x)} {op} {_type(y)}")
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if y == 0:
        raise OttlRuntimeError("attempted to divide by 0")
    if isinstance(x, int) and isinstance(y, int):
        q = abs(x) // abs(y)  # Go truncates toward zero
        return q if (x >= 0) == (y >= 0) else -q
    return x / y


def _type(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, cx.Time):
        return "time"
    if isinstance(v, cx.Duration):
        return "duration"
    return {bool: "bool", int: "int", float: "float", str: "string", bytes: "bytes", list: "slice",
            dict: "map"}.get(type(v), type(v).__name__)


# --- converters ---


def _string_like(v: Any) -> str | None:
    """StringLikeGetter: nil is 'no value'; bytes hex; maps/slices/numbers JSON, as the collector does."""
    if v is None:
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e21:
        return str(int(v))  # Go's JSON writes 1.0 as 1
    try:
        return json.dumps(v, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError) as e:
        raise OttlRuntimeError(f"unsupported type: {_type(v)}") from e


def _go_len(v: Any) -> int:
    if isinstance(v, str):
        return len(v.encode())
    if isinstance(v, bytes | list | dict):
        return len(v)
    raise OttlRuntimeError(f"Len: unsupported target type {_type(v)}")


class _Compiler:
    def __init__(self, signal: str, context: str) -> None:
        self.signal = signal
        self.context = context
        order = cx.HIERARCHY[signal]
        self.visible = order[: order.index(context) + 1]

    # boolean level
    def cond(self, n: Node) -> Callable[[cx.Item], bool]:
        if isinstance(n, BoolOp):
            parts = [self.cond(x) for x in n.items]
            if n.op == "and":
                return lambda it: all(p(it) for p in parts)
            return lambda it: any(p(it) for p in parts)
        if isinstance(n, Not):
            inner = self.cond(n.value)
            return lambda it: not inner(it)
        if isinstance(n, Compare):
            fast = self._compare_constant(n)
            if fast is not None:
                return fast
            left, right, op = self.value(n.left), self.value(n.right), n.op
            return lambda it: compare(left(it), right(it), op)
        if isinstance(n, Literal) and isinstance(n.value, bool):
            v = n.value
            return lambda it: v
        if isinstance(n, Call):
            call = self.value(n)
            name = n.name

            def boolean(it: cx.Item) -> bool:
                r = call(it)
                if not isinstance(r, bool):
                    raise OttlRuntimeError(f"{name} returned {_type(r)}, not a boolean")
                return r

            return boolean
        raise OttlSyntaxError("expected a condition", n.col)

    def _constant(self, n: Node) -> tuple[bool, Any]:
        if isinstance(n, Literal):
            return True, n.value
        if isinstance(n, Enum):
            self.value(n)  # unknown enums are errors
            return True, cx.ENUMS[self.context][n.name]
        return False, None

    def _compare_constant(self, n: Compare) -> Callable[[cx.Item], bool] | None:
        """The same semantics as compare(), specialised for a literal or enum side (the common case):
        one type test and one comparison per item instead of compare()'s dispatch."""
        op = n.op
        const, v = self._constant(n.right)
        other = n.left
        if not const:
            const, v = self._constant(n.left)
            other = n.right
            op = _SWAPPED[op]
        if not const or isinstance(v, bool | bytes) or self._constant(other)[0]:
            return None
        if isinstance(v, str) and op in ("==", "!=") and isinstance(other, Path):
            fast = self._attribute_equals(other, v, op == "!=")
            if fast is not None:
                return fast
        get = self.value(other)
        if v is None:
            if op == "==":
                return lambda it: get(it) is None
            if op == "!=":
                return lambda it: get(it) is not None
            return None
        cmp = _OPS[op]
        if isinstance(v, str):
            if op == "!=":
                return lambda it: not ((x := get(it)).__class__ is str and x == v)
            return lambda it: (x := get(it)).__class__ is str and cmp(x, v)
        if isinstance(v, int | float):
            num = (int, float)
            if op == "!=":
                return lambda it: not ((x := get(it)).__class__ in num and x == v)
            return lambda it: (x := get(it)).__class__ in num and cmp(x, v)
        return None

    def _attribute_equals(self, p: Path, want: str, negate: bool) -> Callable[[cx.Item], bool] | None:
        """attributes["k"] == "v" read straight from the KeyValue list: the most common condition there is."""
        ctx, names = self.path_context(p)
        if names != ["attributes"] or len(p.keys) != 1 or not isinstance(p.keys[0], str) \
                or not cx.has_attributes(ctx) or ctx not in self.visible:
            return None
        key = p.keys[0]
        msg = cx.MESSAGE[ctx]

        def equals(it: cx.Item) -> bool:
            for kv in msg(it).attributes:
                if kv.key == key:
                    av = kv.value
                    return (av.WhichOneof("value") == "string_value" and av.string_value == want) is not negate
            return negate

        return equals

    # value level
    def value(self, n: Node) -> Getter:
        if isinstance(n, Literal):
            v = n.value
            return lambda it: v
        if isinstance(n, Enum):
            table = cx.ENUMS.get(self.context, {})
            if n.name not in table:
                known = [c for c, t in cx.ENUMS.items() if n.name in t]
                where = f" (an enum of the {known[0]} context)" if known else ""
                raise OttlSyntaxError(f'unknown enum "{n.name}" in the {self.context} context{where}', n.col)
            ev = table[n.name]
            return lambda it: ev
        if isinstance(n, Math):
            left, right, op = self.value(n.left), self.value(n.right), n.op
            fast = _PLAIN_ARITH.get(op)
            if fast is None:
                return lambda it: _arith(left(it), op, right(it))
            plain = (int, float)

            def math(it: cx.Item) -> Any:
                # two plain numbers (the usual span.end_time_unix_nano - span.start_time_unix_nano):
                # what _arith computes, without its type dispatch; anything else goes through it
                x, y = left(it), right(it)
                if x.__class__ in plain and y.__class__ in plain:
                    return fast(x, y)
                return _arith(x, op, y)

            return math
        if isinstance(n, Negate):
            inner = self.value(n.value)

            def neg(it: cx.Item) -> Any:
                v = inner(it)
                if isinstance(v, cx.Duration):
                    return cx.Duration(-v)
                if not _is_num(v):
                    raise OttlRuntimeError(f"unsupported unary minus on {_type(v)}")
                return -v

            return neg
        if isinstance(n, Path):
            return self.path(n)
        if isinstance(n, Call):
            return self.call(n)
        if isinstance(n, BoolOp | Not | Compare):
            raise OttlSyntaxError("a condition cannot be used as a value here", n.col)
        raise OttlSyntaxError("unsupported expression", n.col)

    def path_context(self, p: Path) -> tuple[str, list[str]]:
        """The context a path names (its first segment when that is a context name) and the rest."""
        first = cx.CONTEXT_ALIASES.get(p.names[0], p.names[0])
        if first in cx.HIERARCHY[self.signal] and len(p.names) > 1:
            return first, p.names[1:]
        return self.context, p.names

    def path(self, p: Path) -> Getter:
        ctx, names = self.path_context(p)
        if ctx not in self.visible:
            raise OttlSyntaxError(f'path "{p.text()}" names the {ctx} context, which a {self.context} condition '
                                  f"cannot read (it reads {', '.join(self.visible)})", p.col)
        dotted = ".".join(names)
        if dotted == "attributes" and cx.has_attributes(ctx):
            if not p.keys:
                return cx.all_attributes(ctx)
            key, rest = p.keys[0], p.keys[1:]
            if not isinstance(key, str):
                raise OttlSyntaxError("attributes are indexed by a string key", p.col)
            get = cx.attribute_getter(ctx)
            base: Getter = lambda it: get(it, key)  # noqa: E731
            return _index(base, rest) if rest else base
        if dotted in ("body", "body.string") and ctx == "log" and p.keys:
            if dotted == "body.string":
                raise OttlSyntaxError("body.string cannot be indexed", p.col)
            msg = cx.MESSAGE["log"]
            return _index(lambda it: value_of(msg(it).body), p.keys)
        g = cx.field_getter(ctx, dotted)
        if g is None:
            known = sorted([*cx.FIELDS[ctx], *(["attributes"] if cx.has_attributes(ctx) else [])])
            raise OttlSyntaxError(f'unknown path "{p.text()}" in the {ctx} context (gotel reads: {", ".join(known)})',
                                  p.col)
        if p.keys:
            return _index(g, p.keys)
        return g

    def call(self, n: Call) -> Getter:
        spec = _CONVERTERS.get(n.name)
        if spec is None:
            raise OttlSyntaxError(f'unsupported converter "{n.name}" (gotel supports: {", ".join(sorted(_CONVERTERS))})',
                                  n.col)
        arity, build, contexts = spec
        if contexts and self.context not in contexts:
            raise OttlSyntaxError(f"{n.name} is available only in the {' or '.join(contexts)} context, "
                                  f"not in {self.context}", n.col)
        if len(n.args) != arity:
            raise OttlSyntaxError(f"{n.name} takes {arity} argument{'s' if arity != 1 else ''}, got {len(n.args)}",
                                  n.col)
        return build(self, n)


def _index(base: Getter, keys: list[str | int]) -> Getter:
    def get(it: cx.Item) -> Any:
        v = base(it)
        for k in keys:
            if v is None:
                return None
            if isinstance(k, str):
                if not isinstance(v, dict):
                    raise OttlRuntimeError(f'cannot index {_type(v)} with "{k}"')
                v = v.get(k)
            else:
                if not isinstance(v, list):
                    raise OttlRuntimeError(f"cannot index {_type(v)} with {k}")
                if not 0 <= k < len(v):
                    raise OttlRuntimeError(f"index {k} out of bounds")
                v = v[k]
        return v

    return get


def _literal_string(c: _Compiler, n: Node, what: str) -> str:
    if not isinstance(n, Literal) or not isinstance(n.value, str):
        raise OttlSyntaxError(f"{what} must be a string literal in gotel's OTTL", n.col)
    return n.value


def _is_match(c: _Compiler, n: Call) -> Getter:
    target = c.value(n.args[0])
    pattern = _literal_string(c, n.args[1], "the IsMatch pattern")
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise OttlSyntaxError(f"invalid IsMatch pattern {pattern!r}: {e}", n.args[1].col) from None
    search = rx.search

    def is_match(it: cx.Item) -> bool:
        s = _string_like(target(it))
        return False if s is None else search(s) is not None

    return is_match


def _type_check(pred: Callable[[Any], bool]) -> Callable[[_Compiler, Call], Getter]:
    def build(c: _Compiler, n: Call) -> Getter:
        target = c.value(n.args[0])
        return lambda it: pred(target(it))

    return build


def _len(c: _Compiler, n: Call) -> Getter:
    target = c.value(n.args[0])
    return lambda it: _go_len(target(it))


def _duration(c: _Compiler, n: Call) -> Getter:
    text = _literal_string(c, n.args[0], "the Duration argument")
    try:
        d = cx.Duration(round(parse_duration(text) * 1e9))
    except ValueError as e:
        raise OttlSyntaxError(str(e), n.args[0].col) from None
    return lambda it: d


def _points(m: Any) -> Any:
    kind = m.WhichOneof("data")
    return getattr(m, kind).data_points if kind else ()


def _has_attr_key(c: _Compiler, n: Call) -> Getter:
    key = _literal_string(c, n.args[0], "the key")
    return lambda it: any(kv.key == key for dp in _points(it.item) for kv in dp.attributes)


def _has_attr(c: _Compiler, n: Call) -> Getter:
    key = _literal_string(c, n.args[0], "the key")
    want = _literal_string(c, n.args[1], "the value")

    def has(it: cx.Item) -> bool:
        for dp in _points(it.item):
            for kv in dp.attributes:
                if kv.key == key:
                    v = kv.value.string_value if kv.value.WhichOneof("value") == "string_value" else ""
                    if v == want:
                        return True
        return False

    return has


def _is_root(c: _Compiler, n: Call) -> Getter:
    return lambda it: len(it.item.parent_span_id) == 0


_Build = Callable[[_Compiler, Call], Getter]
_CONVERTERS: dict[str, tuple[int, _Build, tuple[str, ...]]] = {
    "IsMatch": (2, _is_match, ()),
    "IsString": (1, _type_check(lambda v: isinstance(v, str)), ()),
    "IsBool": (1, _type_check(lambda v: isinstance(v, bool)), ()),
    "IsInt": (1, _type_check(lambda v: isinstance(v, int) and not isinstance(v, bool | cx.Time | cx.Duration)), ()),
    "IsDouble": (1, _type_check(lambda v: isinstance(v, float)), ()),
    "IsMap": (1, _type_check(lambda v: isinstance(v, dict)), ()),
    "IsList": (1, _type_check(lambda v: isinstance(v, list)), ()),
    "Len": (1, _len, ()),
    "Duration": (1, _duration, ()),
    "HasAttrKeyOnDatapoint": (1, _has_attr_key, ("metric",)),
    "HasAttrOnDatapoint": (2, _has_attr, ("metric",)),
    "IsRootSpan": (0, _is_root, ("span",)),
}
CONVERTERS = frozenset(_CONVERTERS)
CONTEXT_OF_CONVERTER = {name: spec[2][0] for name, spec in _CONVERTERS.items() if spec[2]}


def compile_tree(tree: Node, signal: str, context: str) -> Callable[[cx.Item], bool]:
    return _Compiler(signal, context).cond(tree)


def path_contexts(tree: Node, signal: str) -> list[tuple[str | None, Path]]:
    """Every path of a tree with the context its prefix names (None when it has no context prefix)."""
    out: list[tuple[str | None, Path]] = []
    names = cx.HIERARCHY[signal]

    def walk(n: Node) -> None:
        if isinstance(n, Path):
            first = cx.CONTEXT_ALIASES.get(n.names[0], n.names[0])
            out.append((first if first in names and len(n.names) > 1 else None, n))
        elif isinstance(n, BoolOp):
            for x in n.items:
                walk(x)
        elif isinstance(n, Not | Negate):
            walk(n.value)
        elif isinstance(n, Compare | Math):
            walk(n.left)
            walk(n.right)
        elif isinstance(n, Call):
            for x in n.args:
                walk(x)

    walk(tree)
    return out


def calls(tree: Node) -> list[Call]:
    out: list[Call] = []

    def walk(n: Node) -> None:
        if isinstance(n, Call):
            out.append(n)
            for x in n.args:
                walk(x)
        elif isinstance(n, BoolOp):
            for x in n.items:
                walk(x)
        elif isinstance(n, Not | Negate):
            walk(n.value)
        elif isinstance(n, Compare | Math):
            walk(n.left)
            walk(n.right)

    walk(tree)
    return out
