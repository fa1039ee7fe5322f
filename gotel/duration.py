"""Durations in configs, written as the collector writes them ("5m", "1h30m", "250ms") or as seconds."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_SCALE = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(v: object) -> float:
    """'1h30m' -> 5400.0; numbers are seconds. Raises ValueError with the accepted forms."""
    if isinstance(v, bool):
        raise ValueError("a duration is a number of seconds or a string like 30s, 5m, 1h30m")
    if isinstance(v, int | float):
        if v < 0:
            raise ValueError("a duration cannot be negative")
        return float(v)
    if isinstance(v, str):
        s = v.strip()
        if s in ("0", ""):
            return 0.0
        pos = 0
        total = 0.0
        for m in _PART.finditer(s):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _SCALE[m.group(2)]
            pos = m.end()
        if pos == len(s) and pos > 0:
            return total
        try:
            return parse_duration(float(s))
        except ValueError:
            pass
    raise ValueError(f"invalid duration {v!r}: use seconds or a string like 30s, 5m, 1h30m, 250ms")


Duration = Annotated[float, BeforeValidator(parse_duration)]


def go_duration(seconds: float) -> str:
    """Seconds as a Go duration string (what Jaeger's query API parses)."""
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    us = round(seconds * 1e6)
    if us % 1000 == 0:
        return f"{us // 1000}ms"
    return f"{us}us"
