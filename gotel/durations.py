"""Durations in configs: seconds as a number, or Go/collector-style strings ("15s", "1m30s", "250ms")."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(v: Any) -> Any:
    """'1m30s' -> 90.0; numbers pass through (seconds); anything else is left for pydantic to reject."""
    if isinstance(v, str):
        s = v.strip()
        try:
            return float(s)
        except ValueError:
            pass
        pos, total = 0, 0.0
        for m in _PART.finditer(s):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(s) or not s:
            raise ValueError(f"invalid duration {v!r}: use seconds or a Go duration such as 15s, 1m30s, 250ms")
        return total
    return v


Duration = Annotated[float, BeforeValidator(parse_duration)]
