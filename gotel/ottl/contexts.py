"""OTTL contexts over OTLP protobuf: which paths each context reads, its enums, and the hierarchy per signal.

An evaluation runs against an ``Item``: the resource, scope and the item (span, span event, metric, data
point, log record) being looked at, as protobuf messages, so nothing is converted to read one field.
Values are what the collector's OTTL returns: int for enums, ids and times in nanoseconds, ``Time``
and ``Duration`` for ``*_time`` paths, plain Python values for attributes (bool/int/float/str/bytes/
list/dict), None for a missing attribute or an empty body.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from gotel.pdata.batch import value_of

Getter = Callable[["Item"], Any]


class Item:
    """The messages one evaluation looks at; the processor sets the fields as it walks a batch."""

    __slots__ = ("event", "item", "resource", "scope", "sub")

    def __init__(self) -> None:
        self.resource: Any = None
        self.scope: Any = None
        self.item: Any = None  # span, metric or log record
        self.sub: Any = None  # span event or data point


class Time(int):
    """A point in time (ns since the epoch): comparable with Time, never with plain numbers."""

    __slots__ = ()


class Duration(int):
    """A span of time in ns, as OTTL's Duration converter and time arithmetic return."""

    __slots__ = ()


# Context hierarchies, highest first. "instrumentation_scope" is the older name of scope paths.
HIERARCHY: dict[str, tuple[str, ...]] = {
    "traces": ("resource", "scope", "span", "spanevent"),
    "metrics": ("resource", "scope", "metric", "datapoint"),
    "logs": ("resource", "scope", "log"),
}
CONTEXT_ALIASES = {"instrumentation_scope": "scope"}

ENUMS: dict[str, dict[str, int]] = {
    "span": {
        "SPAN_KIND_UNSPECIFIED": 0, "SPAN_KIND_INTERNAL": 1, "SPAN_KIND_SERVER": 2, "SPAN_KIND_CLIENT": 3,
        "SPAN_KIND_PRODUCER": 4, "SPAN_KIND_CONSUMER": 5,
        "STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2,
    },
    "metric": {
        "METRIC_DATA_TYPE_NONE": 0, "METRIC_DATA_TYPE_GAUGE": 1, "METRIC_DATA_TYPE_SUM": 2,
        "METRIC_DATA_TYPE_HISTOGRAM": 3, "METRIC_DATA_TYPE_EXPONENTIAL_HISTOGRAM": 4, "METRIC_DATA_TYPE_SUMMARY": 5,
        "AGGREGATION_TEMPORALITY_UNSPECIFIED": 0, "AGGREGATION_TEMPORALITY_DELTA": 1,
        "AGGREGATION_TEMPORALITY_CUMULATIVE": 2, "FLAG_NONE": 0, "FLAG_NO_RECORDED_VALUE": 1,
    },
    "log": {"SEVERITY_NUMBER_UNSPECIFIED": 0, **{
        f"SEVERITY_NUMBER_{name}{suffix}": base + i
        for name, base in (("TRACE", 1), ("DEBUG", 5), ("INFO", 9), ("WARN", 13), ("ERROR", 17), ("FATAL", 21))
        for i, suffix in enumerate(("", "2", "3", "4"))
    }},
}
# enums are defined by the item contexts and usable below them
ENUMS["spanevent"] = ENUMS["span"]
ENUMS["datapoint"] = ENUMS["metric"]

_METRIC_TYPES = {None: 0, "gauge": 1, "sum": 2, "histogram": 3, "exponential_histogram": 4, "summary": 5}


def _attr_getter(msg: Callable[[Item], Any]) -> Callable[[Item, str], Any]:
    def get(it: Item, key: str) -> Any:
        for kv in msg(it).attributes:
            if kv.key == key:
                return value_of(kv.value)
        return None

    return get


def _metric_type(m: Any) -> int:
    return _METRIC_TYPES[m.WhichOneof("data")]


def _temporality(m: Any) -> int:
    kind = m.WhichOneof("data")
    return int(getattr(m, kind).aggregation_temporality) if kind in ("sum", "histogram", "exponential_histogram") else 0


def _dp_field(name: str) -> Callable[[Any], Any]:
    """A field some data point types have (count, sum, ...): nil on the others, as the collector's."""

    def get(dp: Any) -> Any:
        return getattr(dp, name, None)

    return get


def _number_value(kind: str) -> Callable[[Any], Any]:
    """value_int / value_double: the number point's field (0 when it holds the other type), nil for
    histogram and summary points, as pdata's IntValue()/DoubleValue() in the collector."""
    zero = 0 if kind == "as_int" else 0.0

    def get(dp: Any) -> Any:
        if not hasattr(dp, "as_int"):
            return None
        return getattr(dp, kind) if dp.WhichOneof("value") == kind else zero

    return get


def _hex(b: bytes) -> str:
    return b.hex()


# Per context: field name (dotted) -> function of that context's message. "attributes" is handled apart.
FIELDS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "resource": {"dropped_attributes_count": lambda r: r.dropped_attributes_count},
    "scope": {
        "name": lambda s: s.name, "version": lambda s: s.version,
        "dropped_attributes_count": lambda s: s.dropped_attributes_count,
    },
    "span": {
        "name": lambda s: s.name, "kind": lambda s: int(s.kind),
        "kind.string": lambda s: ("", "Internal", "Server", "Client", "Producer", "Consumer")[s.kind]
        if 0 <= s.kind <= 5 else "",
        "status.code": lambda s: int(s.status.code), "status.message": lambda s: s.status.message,
        "start_time_unix_nano": lambda s: int(s.start_time_unix_nano),
        "end_time_unix_nano": lambda s: int(s.end_time_unix_nano),
        "start_time": lambda s: Time(s.start_time_unix_nano), "end_time": lambda s: Time(s.end_time_unix_nano),
        "trace_id": lambda s: bytes(s.trace_id), "span_id": lambda s: bytes(s.span_id),
        "parent_span_id": lambda s: bytes(s.parent_span_id),
        "trace_id.string": lambda s: _hex(s.trace_id), "span_id.string": lambda s: _hex(s.span_id),
        "parent_span_id.string": lambda s: _hex(s.parent_span_id),
        "trace_state": lambda s: s.trace_state, "flags": lambda s: int(s.flags),
        "dropped_attributes_count": lambda s: s.dropped_attributes_count,
        "dropped_events_count": lambda s: s.dropped_events_count,
        "dropped_links_count": lambda s: s.dropped_links_count,
        "events": lambda s: list(s.events), "links": lambda s: list(s.links),
    },
    "spanevent": {
        "name": lambda e: e.name, "time_unix_nano": lambda e: int(e.time_unix_nano),
        "time": lambda e: Time(e.time_unix_nano), "dropped_attributes_count": lambda e: e.dropped_attributes_count,
    },
    "metric": {
        "name": lambda m: m.name, "description": lambda m: m.description, "unit": lambda m: m.unit,
        "type": _metric_type, "aggregation_temporality": _temporality,
        "is_monotonic": lambda m: m.sum.is_monotonic if m.WhichOneof("data") == "sum" else False,
    },
    "datapoint": {
        "start_time_unix_nano": lambda d: int(d.start_time_unix_nano),
        "time_unix_nano": lambda d: int(d.time_unix_nano),
        "start_time": lambda d: Time(d.start_time_unix_nano), "time": lambda d: Time(d.time_unix_nano),
        "value_int": _number_value("as_int"), "value_double": _number_value("as_double"),
        "flags": lambda d: int(d.flags), "count": _dp_field("count"), "sum": _dp_field("sum"),
        "scale": _dp_field("scale"), "zero_count": _dp_field("zero_count"),
    },
    "log": {
        "severity_number": lambda r: int(r.severity_number), "severity_text": lambda r: r.severity_text,
        "time_unix_nano": lambda r: int(r.time_unix_nano),
        "observed_time_unix_nano": lambda r: int(r.observed_time_unix_nano),
        "time": lambda r: Time(r.time_unix_nano), "observed_time": lambda r: Time(r.observed_time_unix_nano),
        "trace_id": lambda r: bytes(r.trace_id), "span_id": lambda r: bytes(r.span_id),
        "trace_id.string": lambda r: _hex(r.trace_id), "span_id.string": lambda r: _hex(r.span_id),
        "flags": lambda r: int(r.flags), "event_name": lambda r: r.event_name,
        "dropped_attributes_count": lambda r: r.dropped_attributes_count,
        "body": lambda r: value_of(r.body), "body.string": lambda r: _body_string(r.body),
    },
}


def _body_string(av: Any) -> str:
    v = value_of(av)
    return "" if v is None else v if isinstance(v, str) else str(v)


# Where each context's message is in an Item, and a getter for it.
_SLOT = {"resource": "resource", "scope": "scope", "span": "item", "metric": "item", "log": "item",
         "spanevent": "sub", "datapoint": "sub"}
MESSAGE: dict[str, Callable[[Item], Any]] = {ctx: operator.attrgetter(slot) for ctx, slot in _SLOT.items()}


def has_attributes(ctx: str) -> bool:
    return ctx != "metric"


def field_getter(ctx: str, name: str) -> Getter | None:
    """A getter for a field path (no attributes) of ctx, or None when ctx has no such field."""
    f = FIELDS[ctx].get(name)
    if f is None:
        return None
    # the Item slot read inline: one call less per evaluation than f(MESSAGE[ctx](it))
    slot = _SLOT[ctx]
    if slot == "item":
        return lambda it: f(it.item)
    if slot == "sub":
        return lambda it: f(it.sub)
    msg = MESSAGE[ctx]
    return lambda it: f(msg(it))


def attribute_getter(ctx: str) -> Callable[[Item, str], Any]:
    return _attr_getter(MESSAGE[ctx])


def all_attributes(ctx: str) -> Getter:
    msg = MESSAGE[ctx]
    return lambda it: {kv.key: value_of(kv.value) for kv in msg(it).attributes}
