"""OTLP -> Prometheus names, as the collector's translator does (underscore escaping with suffixes).

Shared by the ``prometheus`` (scrape) and ``prometheus_remote_write`` exporters so that one metric gets
the same name and labels whichever way it reaches Prometheus. Results are cached: the same few
hundred metric names and attribute keys repeat in every batch.
"""

from __future__ import annotations

import re
from functools import lru_cache

# UCUM-ish units used by OTel semconv -> Prometheus unit words.
UNITS: dict[str, str] = {
    # time
    "d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds",
    "us": "microseconds", "ns": "nanoseconds",
    # bytes
    "By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes", "GiBy": "gibibytes", "TiBy": "tibibytes",
    "KBy": "kilobytes", "MBy": "megabytes", "GBy": "gigabytes", "TBy": "terabytes",
    # SI
    "m": "meters", "V": "volts", "A": "amperes", "J": "joules", "W": "watts", "g": "grams",
    # misc
    "Cel": "celsius", "Hz": "hertz", "1": "", "%": "percent",
}
PER_UNITS: dict[str, str] = {
    "s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year",
}

_INVALID_METRIC = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]")
_TOKEN_SPLIT = re.compile(r"[^a-zA-Z0-9:]+")
_ANNOTATION = re.compile(r"\{[^}]*\}")
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def check_namespace(v: str) -> str:
    """A config's metric-name prefix, as a pydantic validator body: raises ValueError naming the rule."""
    if v and not METRIC_NAME_RE.match(v):
        raise ValueError(f"namespace {v!r} must match [a-zA-Z_:][a-zA-Z0-9_:]*")
    return v


def check_label_names(v: dict[str, str], key: str) -> dict[str, str]:
    """Labels a config adds to every series (`key` names the setting): valid, not reserved (__*)."""
    bad = [k for k in v if not LABEL_NAME_RE.match(k) or k.startswith("__")]
    if bad:
        raise ValueError(f"invalid label names in {key}: {bad} (must match [a-zA-Z_][a-zA-Z0-9_]*)")
    return v


def _unit_word(unit: str, table: dict[str, str]) -> str:
    unit = unit.strip()
    if unit in table:
        return table[unit]
    # Unknown units are kept when they are name-safe once cleaned ("requests", "{packets}" is dropped above).
    return "_".join(t for t in _TOKEN_SPLIT.split(unit) if t)


@lru_cache(maxsize=4096)
def unit_tokens(unit: str) -> tuple[str, ...]:
    """'ms' -> ('milliseconds',); 'By/s' -> ('bytes', 'per', 'second'); '{req}' -> (); '1' -> ()."""
    unit = _ANNOTATION.sub("", unit or "").strip()
    if not unit:
        return ()
    main, _, per = unit.partition("/")
    out: list[str] = []
    mw = _unit_word(main, UNITS) if main.strip() else ""
    if mw:
        out.extend(mw.split("_"))
    if per.strip():
        pw = _unit_word(per, PER_UNITS)
        if pw:
            out.append("per")
            out.extend(pw.split("_"))
    return tuple(out)


@lru_cache(maxsize=8192)
def metric_name(name: str, unit: str = "", kind: str = "gauge", namespace: str = "", suffixes: bool = True) -> str:
    """The Prometheus family name of an OTLP metric.

    kind: 'counter' (monotonic cumulative sum: gets ``_total``), 'gauge' (unit 1 gets ``_ratio``),
    'histogram', 'summary'. The counter's ``_total`` is part of the returned name, as the collector
    names it; OpenMetrics writers strip it again for the family line.
    """
    if not suffixes:
        full = f"{namespace}_{name}" if namespace else name
        out = _INVALID_METRIC.sub("_", full)
        return "_" + out if out[:1].isdigit() else out
    tokens = [t for t in _TOKEN_SPLIT.split(name) if t]
    if kind == "counter":
        tokens = [t for t in tokens if t != "total"]
    ut = unit_tokens(unit)
    if ut:
        # Appended unless the name already carries the unit ("duration_seconds" in "s" stays as is).
        joined = "_".join(tokens)
        suffix = "_".join(ut)
        if not (joined == suffix or joined.endswith("_" + suffix)):
            tokens.extend(ut)
    if kind == "gauge" and (unit or "").strip() == "1" and (not tokens or tokens[-1] != "ratio"):
        tokens.append("ratio")
    if kind == "counter":
        tokens.append("total")
    if namespace:
        tokens.insert(0, _INVALID_METRIC.sub("_", namespace))
    out = "_".join(tokens) or "_"
    if out[0].isdigit():
        out = "_" + out
    return out


@lru_cache(maxsize=16384)
def label_name(key: str) -> str:
    """An attribute key as a Prometheus label name: invalid characters become '_', a leading digit
    gets 'key_'. Names starting with '__' are reserved by Prometheus, so they get 'key' in front."""
    if not key:
        return "key_empty"
    out = _INVALID_LABEL.sub("_", key)
    if out[0].isdigit():
        out = "key_" + out
    elif out.startswith("__"):
        out = "key" + out
    return out


def unit_for_family(family: str, unit: str) -> str:
    """The OpenMetrics UNIT of a family, only when the family name ends with it (the spec requires it)."""
    ut = unit_tokens(unit)
    if not ut:
        return ""
    suffix = "_".join(ut)
    return suffix if family.endswith("_" + suffix) else ""
