"""What bytes a condition needs to see: a cheap proof that no item of a request can match.

Protobuf carries strings as raw UTF-8, so `attributes["http.route"] == "/healthz"` can only be true for
an item of a request whose wire bytes contain b"/healthz". `required(tree)` returns byte strings of which
at least one must occur in the request for the condition to hold anywhere in it, or None when the
condition gives no such proof (numbers, negations, regexes with operators). A processor that finds none
of them in a received request skips evaluating it item by item.
"""

from __future__ import annotations

import re

from gotel.ottl.grammar import BoolOp, Call, Compare, Enum, Literal, Node, Not, Path

# Paths whose value is always a protobuf string field, exactly as it is on the wire.
_STRING_FIELDS = frozenset({"name", "status.message", "severity_text", "trace_state", "event_name", "version",
                            "description", "unit"})
_CONTEXTS = frozenset({"resource", "scope", "instrumentation_scope", "span", "spanevent", "metric", "datapoint",
                       "log"})
_META = re.compile(r"[.^$*+?{}\[\]\\|()]")

Needs = frozenset[bytes] | None


# What lies inside an item's bytes: a span holds its events, a metric its data points.
OWN: dict[str, frozenset[str]] = {
    "span": frozenset({"span"}), "spanevent": frozenset({"span", "spanevent"}), "metric": frozenset({"metric"}),
    "datapoint": frozenset({"metric", "datapoint"}), "log": frozenset({"log"}),
}


class _Scope:
    """Which paths may give a proof: all (a whole request), or those of the item's own contexts."""

    def __init__(self, context: str, own: frozenset[str] | None) -> None:
        self.context = context
        self.own = own

    def allows(self, n: Path) -> bool:
        if self.own is None:
            return True
        first = "scope" if n.names[0] == "instrumentation_scope" else n.names[0]
        ctx = first if first in _CONTEXTS and len(n.names) > 1 else self.context
        return ctx in self.own


def _field(n: Node, scope: _Scope | None = None) -> str | None:
    if not isinstance(n, Path) or (scope is not None and not scope.allows(n)):
        return None
    names = n.names[1:] if n.names[0] in _CONTEXTS and len(n.names) > 1 else n.names
    return ".".join(names)


def _string_valued(n: Node, scope: _Scope) -> bool:
    """A path whose value, when it is a string, is that string's bytes on the wire (an attribute value,
    a map body's entry, a string field): equal to a string literal means those bytes are there."""
    f = _field(n, scope)
    if f is None or not isinstance(n, Path):
        return False
    return (f in ("attributes", "body") and (f == "body" or bool(n.keys))) or (f in _STRING_FIELDS and not n.keys)


def _regex_literal(pattern: str) -> str | None:
    """The literal text every match of pattern contains, for patterns that are a plain string with
    optional ^, $ and leading/trailing .* (IsMatch(body, ".*password.*"))."""
    p = pattern.removeprefix("^").removesuffix("$")
    while p.startswith(".*"):
        p = p[2:]
    while p.endswith(".*") and not p.endswith("\\.*"):
        p = p[:-2]
    return p if p and not _META.search(p) else None


def required(n: Node, context: str = "", own: frozenset[str] | None = None) -> Needs:
    """Byte strings one of which must be in the request (own=None) or, with own, inside the bytes of
    the item being decided (paths of other contexts then give no proof)."""
    return _required(n, _Scope(context, own))


def _required(n: Node, scope: _Scope) -> Needs:
    if isinstance(n, Compare) and n.op == "==":
        for a, b in ((n.left, n.right), (n.right, n.left)):
            if _string_valued(a, scope) and isinstance(b, Literal) and isinstance(b.value, str) and b.value:
                return frozenset({b.value.encode()})
        return None
    if isinstance(n, Call) and n.name == "IsMatch" and len(n.args) == 2:
        pat = n.args[1]
        # only string fields: IsMatch reads a number, a map or bytes as its JSON or hex text
        target = n.args[0]
        if _field(target, scope) in _STRING_FIELDS and isinstance(pat, Literal) and isinstance(pat.value, str) \
                and isinstance(target, Path) and not target.keys:
            lit = _regex_literal(pat.value)
            return frozenset({lit.encode()}) if lit else None
        return None
    if isinstance(n, Literal) and n.value is False:
        return frozenset()
    if isinstance(n, BoolOp):
        parts = [_required(x, scope) for x in n.items]
        if n.op == "and":
            known = [p for p in parts if p is not None]
            return min(known, key=len) if known else None
        sets = [p for p in parts if p is not None]
        if len(sets) < len(parts):
            return None
        return frozenset[bytes]().union(*sets)
    if isinstance(n, Not):
        return None
    return None


_SAFE_CALLS = frozenset({"IsMatch", "IsString", "IsBool", "IsInt", "IsDouble", "IsMap", "IsList", "IsRootSpan",
                         "HasAttrKeyOnDatapoint", "HasAttrOnDatapoint", "Duration"})


def may_fail(n: Node) -> bool:
    """Whether evaluating the condition can raise (Len of a number, arithmetic, indexing a non-map).
    Under error_mode propagate such an error refuses the batch, so a condition that may fail is never
    skipped by a byte proof: skipping it could hide the error the collector would report."""
    if isinstance(n, Call):
        return n.name not in _SAFE_CALLS or any(may_fail(a) for a in n.args)
    if isinstance(n, Path):
        return len(n.keys) > 1 or (bool(n.keys) and not isinstance(n.keys[0], str))
    if isinstance(n, BoolOp):
        return any(may_fail(x) for x in n.items)
    if isinstance(n, Not):
        return may_fail(n.value)
    if isinstance(n, Compare):
        return may_fail(n.left) or may_fail(n.right)
    return not isinstance(n, Literal | Enum)  # arithmetic, negation


def required_any(needs: list[Needs]) -> Needs:
    """For conditions ORed: all of them must give a proof."""
    sets = [x for x in needs if x is not None]
    if len(sets) < len(needs):
        return None
    return frozenset[bytes]().union(*sets)
