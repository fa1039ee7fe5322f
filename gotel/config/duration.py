"""Durations written the collector's way ("10s", "250ms", "1m30s"): Go's time.ParseDuration grammar.

A leaf module (no gotel imports) so that the component base class can use it; configs import
`Duration` from gotel.config.types. Values are float seconds, so call sites stay `sleep(cfg.x)`.
"""

from __future__ import annotations

import math
import re
import types
import typing
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

# Go's unit table: both micro signs (U+00B5 and U+03BC) are accepted, as time.ParseDuration does.
_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_BARE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
UNIT_NAMES = {"ns": "nanoseconds", "us": "microseconds", "ms": "milliseconds", "s": "seconds", "m": "minutes",
              "h": "hours"}
EXAMPLES = "e.g. 10s, 250ms, 1m30s, 1h, 500us"
UNITS_TEXT = "ns, us, ms, s, m, h"
MAX_SECONDS = (2**63 - 1) / 1e9  # Go's time.Duration is int64 nanoseconds (~292 years)
PATTERN = r"^\+?(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+$|^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)$"


def _bad(v: str, why: str) -> ValueError:
    return ValueError(f"invalid duration {v!r}: {why} ({EXAMPLES}; a bare number is seconds)")


def parse_duration(v: Any) -> float:
    """A Go duration string or a number of seconds -> seconds (float, finite, not negative)."""
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise ValueError(f"expected a duration ({EXAMPLES}), got {type(v).__name__}")
    if isinstance(v, str):
        s = v.strip()
        if not s:
            raise _bad(v, "empty")
        if not _BARE.fullmatch(s):
            return _parse_go(v, s)
    x = float(v)
    if not math.isfinite(x):
        raise ValueError(f"invalid duration {v!r}: must be finite ({EXAMPLES})")
    if x < 0:
        raise ValueError(f"invalid duration {v!r}: must not be negative")
    if x > MAX_SECONDS:
        raise _bad(str(v), "too large: at most 2562047h, as in Go")
    return float(x) or 0.0  # -0 -> 0


def _parse_go(v: str, s: str) -> float:
    """time.ParseDuration: [+-]? then one or more <number><unit>; "0" alone is handled as a bare number."""
    neg = s[0] == "-"
    body = s[1:] if s[0] in "+-" else s
    if not body:
        raise _bad(v, "no number")
    total, i = 0.0, 0
    while i < len(body):
        m = _NUMBER.match(body, i)
        if m is None:
            raise _bad(v, f"expected a number at {body[i:]!r}")
        j = k = m.end()
        while k < len(body) and not ("0" <= body[k] <= "9" or body[k] == "."):
            k += 1
        unit = body[j:k]
        if not unit:
            raise _bad(v, f"missing unit after {m.group()}")
        if unit not in _UNITS:
            raise _bad(v, f"unknown unit {unit!r}, expected one of {UNITS_TEXT}")
        total += float(m.group()) * _UNITS[unit]
        i = k
    if total > MAX_SECONDS:
        raise _bad(v, "too large: at most 2562047h, as in Go")
    if neg and total:
        raise ValueError(f"invalid duration {v!r}: must not be negative")
    return total


def _fraction(n: int, unit: int) -> str:
    whole, frac = divmod(n, unit)
    if not frac:
        return str(whole)
    return f"{whole}.{frac:0{len(str(unit)) - 1}d}".rstrip("0")


def format_duration(v: float) -> str:
    """Seconds -> the shortest Go duration that parses back to the same nanosecond ("1m30s", "250ms")."""
    ns = round(v * 1e9)
    if ns < 0:
        return "-" + format_duration(-v)
    if ns == 0:
        return "0s"
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return _fraction(ns, 1_000) + "us"
    if ns < 1_000_000_000:
        return _fraction(ns, 1_000_000) + "ms"
    h, rem = divmod(ns, 3_600_000_000_000)
    m, rem = divmod(rem, 60_000_000_000)
    return (f"{h}h" if h else "") + (f"{m}m" if m else "") + (_fraction(rem, 1_000_000_000) + "s" if rem else "")


DURATION_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "string", "pattern": PATTERN}, {"type": "number", "minimum": 0}],
    "format": "duration",
}

# Seconds as a float; accepts "5s", "200ms", "1m30s", 1.5 (seconds). Serialized (JSON) as "5s", "200ms".
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, when_used="json"),
    WithJsonSchema(DURATION_SCHEMA),
]


def is_duration_metadata(metadata: list[Any]) -> bool:
    """True when a field's metadata is the Duration type's."""
    return any(isinstance(m, BeforeValidator) and m.func is parse_duration for m in metadata)


def is_duration_field(annotation: Any, metadata: list[Any]) -> bool:
    """A pydantic field (annotation and FieldInfo.metadata) holding a Duration, optional (`Duration | None`) or not."""
    if is_duration_metadata(metadata):
        return True
    if typing.get_origin(annotation) is typing.Annotated:
        return is_duration_metadata(list(getattr(annotation, "__metadata__", ())))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(is_duration_field(a, []) for a in args)
    return False


class ConfigJsonSchema(GenerateJsonSchema):
    """Input (validation) schema whose duration defaults are written as durations ("10s", not 10.0)."""

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        js = super().default_schema(schema)
        d = js.get("default")
        if js.get("format") == "duration" and isinstance(d, int | float) and not isinstance(d, bool):
            js["default"] = format_duration(d)
        return js
