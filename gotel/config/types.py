"""Value types shared by component configs: durations written the collector's way ("200ms", "5s")."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(v: Any) -> float:
    """Go-style duration ("1m30s", "200ms") or a number of seconds -> seconds."""
    if isinstance(v, bool):
        raise ValueError("expected a duration like 5s or 200ms")
    if isinstance(v, int | float):
        if v < 0:
            raise ValueError("duration must not be negative")
        return float(v)
    if isinstance(v, str):
        s = v.strip()
        if s in ("0", ""):
            return 0.0
        pos, total = 0, 0.0
        for m in _PART.finditer(s):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos == len(s) and pos > 0:
            return total
        try:
            return parse_duration(float(s))
        except ValueError:
            pass
    raise ValueError(f"invalid duration {v!r}: expected e.g. 5s, 200ms, 1m30s or a number of seconds")


def format_duration(v: float) -> str:
    if v and v < 1:
        return f"{v * 1000:g}ms"
    return f"{v:g}s"


# Seconds as a float; accepts "5s", "200ms", 1.5.
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, when_used="json"),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^(\d+(\.\d*)?(ns|us|µs|ms|s|m|h))+$"}],
                    "format": "duration"}),
]
