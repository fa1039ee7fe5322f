"""Signal batches: the pipeline's unit of data, held as OTLP protobuf (DESIGN.md section 2).

A batch wraps one ``Export*ServiceRequest``. It can be built from wire bytes without parsing them
(the OTLP receiver hands bytes to the OTLP exporter untouched when nothing in between mutates),
and parses lazily the first time a consumer looks inside.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from enum import StrEnum
from typing import Any, ClassVar

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


class Signal(StrEnum):
    TRACES = "traces"
    METRICS = "metrics"
    LOGS = "logs"
    PROFILES = "profiles"


class Batch:
    """One signal's data as an OTLP export request."""

    signal: ClassVar[Signal]
    request_type: ClassVar[type[Message]]
    __slots__ = ("_count", "_msg", "_raw")

    def __init__(self, msg: Message | None = None, *, raw: bytes | None = None, count: int | None = None) -> None:
        if msg is None and raw is None:
            msg = self.request_type()
        self._msg = msg
        self._raw = raw
        # Item count cached alongside the wire bytes (both describe the unmutated message), so that
        # batching and telemetry downstream of a byte-level concat never parse again.
        self._count = count if raw is not None else None

    @classmethod
    def from_bytes(cls, raw: bytes) -> Batch:
        """Wraps wire bytes; raises google.protobuf.message.DecodeError only when parsed."""
        return cls(raw=raw)

    @classmethod
    def parse(cls, raw: bytes) -> Batch:
        """Parses at once, so that malformed input fails here with DecodeError."""
        msg = cls.request_type()
        msg.ParseFromString(raw)
        return cls(msg, raw=raw)

    @property
    def msg(self) -> Any:
        """The request message. Touching it invalidates the cached wire bytes (it may be mutated)."""
        if self._msg is None:
            m = self.request_type()
            m.ParseFromString(self._raw or b"")
            self._msg = m
        self._raw = None
        self._count = None
        return self._msg

    def peek(self) -> Any:
        """The request message for reading only: keeps the cached wire bytes."""
        if self._msg is None:
            m = self.request_type()
            m.ParseFromString(self._raw or b"")
            self._msg = m
        return self._msg

    def set_wire(self, raw: bytes) -> None:
        """Records wire bytes that encode the message as it now is (framed by hand, e.g. a request with
        some items cut out), so that nobody serializes it again."""
        self._raw = raw
        self._count = None

    def replace_wire(self, raw: bytes, count: int | None = None) -> None:
        """Replaces the content with a request edited at the byte level (gotel.pdata.wire.framing): the
        message is parsed again only if someone looks inside."""
        self._msg = None
        self._raw = raw
        self._count = count

    def cached_bytes(self) -> bytes | None:
        """The wire bytes while they still describe the message (nothing has touched it), else None:
        a processor can look for what it needs in them before it pays for parsing."""
        return self._raw

    def to_bytes(self) -> bytes:
        if self._raw is None:
            assert self._msg is not None
            self._raw = self._msg.SerializeToString()
        return self._raw

    def byte_size(self) -> int:
        if self._raw is not None:
            return len(self._raw)
        assert self._msg is not None
        return int(self._msg.ByteSize())

    def copy(self) -> Batch:
        if self._raw is not None:
            return type(self)(raw=self._raw, count=self._count)
        m = self.request_type()
        m.CopyFrom(self.peek())
        return type(self)(m)

    def resources(self) -> Any:
        """The repeated Resource* field (resource_spans, resource_metrics, ...)."""
        raise NotImplementedError

    def item_count(self) -> int:
        if self._count is not None:
            return self._count
        n = self._count_items()
        if self._raw is not None:
            self._count = n
        return n

    def _count_items(self) -> int:
        raise NotImplementedError

    @classmethod
    def concat(cls, batches: Iterable[Batch]) -> Batch:
        """Merges at the byte level: concatenated serialized requests are the merged request
        (their only field is a repeated one), so nothing is parsed or copied item by item."""
        items = list(batches)
        if len(items) == 1:
            return items[0]
        count = sum(b.item_count() for b in items)
        return cls(raw=b"".join(b.to_bytes() for b in items), count=count)

    def is_empty(self) -> bool:
        return self.item_count() == 0

    @classmethod
    def merge(cls, batches: Iterable[Batch]) -> Batch:
        """Concatenates the resource lists (protobuf merge of the requests)."""
        out = cls()
        field = out.resources()
        for b in batches:
            field.extend(b.peek_resources())
        return out

    def peek_resources(self) -> Any:
        raise NotImplementedError

    def split(self, max_items: int) -> list[Batch]:
        """Splits into batches of at most max_items items, keeping resource and scope grouping."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(items={self.item_count()}, bytes={self.byte_size()})"


def _split_two_level(
    cls: type[Batch], resources: Any, scope_field: str, item_field: str, max_items: int
) -> list[Batch]:
    """Splits Resource -> Scope -> items into request batches of at most max_items items."""
    if max_items <= 0:
        raise ValueError("max_items must be positive")
    out: list[Batch] = []
    cur = cls()
    cur_items = 0

    def flush() -> None:
        nonlocal cur, cur_items
        if cur_items:
            out.append(cur)
        cur = cls()
        cur_items = 0

    for res in resources:
        new_res = None
        for scope in getattr(res, scope_field):
            items = getattr(scope, item_field)
            start = 0
            while start < len(items):
                if new_res is None:
                    new_res = cur.resources().add()
                    new_res.resource.CopyFrom(res.resource)
                    new_res.schema_url = res.schema_url
                room = max_items - cur_items
                chunk = items[start : start + room]
                new_scope = getattr(new_res, scope_field).add()
                new_scope.scope.CopyFrom(scope.scope)
                new_scope.schema_url = scope.schema_url
                getattr(new_scope, item_field).extend(chunk)
                cur_items += len(chunk)
                start += len(chunk)
                if cur_items >= max_items:
                    flush()
                    new_res = None
    flush()
    return out


class Traces(Batch):
    signal = Signal.TRACES
    request_type = ExportTraceServiceRequest
    __slots__ = ()

    def resources(self) -> Any:
        return self.msg.resource_spans

    def peek_resources(self) -> Any:
        return self.peek().resource_spans

    def _count_items(self) -> int:
        return sum(len(ss.spans) for rs in self.peek().resource_spans for ss in rs.scope_spans)

    def split(self, max_items: int) -> list[Batch]:
        return _split_two_level(Traces, self.peek().resource_spans, "scope_spans", "spans", max_items)


def _data_points(metric: Any) -> Any:
    kind = metric.WhichOneof("data")
    if kind is None:
        return ()
    return getattr(metric, kind).data_points


class Metrics(Batch):
    """Counts data points, as the collector's batch processor does for metrics."""

    signal = Signal.METRICS
    request_type = ExportMetricsServiceRequest
    __slots__ = ()

    def resources(self) -> Any:
        return self.msg.resource_metrics

    def peek_resources(self) -> Any:
        return self.peek().resource_metrics

    def _count_items(self) -> int:
        return sum(
            len(_data_points(m))
            for rm in self.peek().resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
        )

    def split(self, max_items: int) -> list[Batch]:
        # A metric is never cut in two: a batch may exceed max_items by one metric's points.
        return _split_two_level(Metrics, self.peek().resource_metrics, "scope_metrics", "metrics", max_items)


class Logs(Batch):
    signal = Signal.LOGS
    request_type = ExportLogsServiceRequest
    __slots__ = ()

    def resources(self) -> Any:
        return self.msg.resource_logs

    def peek_resources(self) -> Any:
        return self.peek().resource_logs

    def _count_items(self) -> int:
        return sum(len(sl.log_records) for rl in self.peek().resource_logs for sl in rl.scope_logs)

    def split(self, max_items: int) -> list[Batch]:
        return _split_two_level(Logs, self.peek().resource_logs, "scope_logs", "log_records", max_items)


class Profiles(Batch):
    """Profiles share one dictionary per request, so two requests are never merged blindly."""

    signal = Signal.PROFILES
    request_type = ExportProfilesServiceRequest
    __slots__ = ()

    def resources(self) -> Any:
        return self.msg.resource_profiles

    def peek_resources(self) -> Any:
        return self.peek().resource_profiles

    def _count_items(self) -> int:
        return sum(len(sp.profiles) for rp in self.peek().resource_profiles for sp in rp.scope_profiles)

    @classmethod
    def merge(cls, batches: Iterable[Batch]) -> Batch:
        items = list(batches)
        if len(items) == 1:
            return items[0]
        raise ValueError("profiles batches carry their own dictionaries and are not merged")

    @classmethod
    def concat(cls, batches: Iterable[Batch]) -> Batch:
        return cls.merge(batches)

    def split(self, max_items: int) -> list[Batch]:
        return [self]

    def resolve_string_refs(self) -> bool:
        """Resource and scope attributes whose key or string value is an index into the dictionary's
        string table (`key_strindex`, `string_value_strindex`: how the collector's pdata sends them, at
        least since v0.161.0) become plain strings, as the collector does on receipt, so that every component
        reads `service.name` the same way. Returns whether anything changed; untouched batches keep
        their wire bytes."""
        scopes = [(rp.resource.attributes, [sp.scope.attributes for sp in rp.scope_profiles])
                  for rp in self.peek().resource_profiles]
        if not any(_has_refs(kvs) for res, scs in scopes for kvs in (res, *scs)):
            return False
        m = self.msg
        table = list(m.dictionary.string_table)
        for rp in m.resource_profiles:
            _resolve_kvs(rp.resource.attributes, table)
            for sp in rp.scope_profiles:
                _resolve_kvs(sp.scope.attributes, table)
        return True


def _has_refs(kvs: Iterable[KeyValue]) -> bool:
    return any(kv.key_strindex or _value_has_refs(kv.value) for kv in kvs)


def _value_has_refs(av: AnyValue) -> bool:
    kind = av.WhichOneof("value")
    if kind == "string_value_strindex":
        return True
    if kind == "kvlist_value":
        return _has_refs(av.kvlist_value.values)
    if kind == "array_value":
        return any(_value_has_refs(x) for x in av.array_value.values)
    return False


def _resolve_kvs(kvs: Iterable[KeyValue], table: list[str]) -> None:
    for kv in kvs:
        if kv.key_strindex and not kv.key and kv.key_strindex < len(table):
            kv.key = table[kv.key_strindex]
            kv.key_strindex = 0
        _resolve_value(kv.value, table)


def _resolve_value(av: AnyValue, table: list[str]) -> None:
    kind = av.WhichOneof("value")
    if kind == "string_value_strindex" and 0 <= av.string_value_strindex < len(table):
        av.string_value = table[av.string_value_strindex]
    elif kind == "kvlist_value":
        _resolve_kvs(av.kvlist_value.values, table)
    elif kind == "array_value":
        for x in av.array_value.values:
            _resolve_value(x, table)


BATCH_TYPES: dict[Signal, type[Batch]] = {
    Signal.TRACES: Traces,
    Signal.METRICS: Metrics,
    Signal.LOGS: Logs,
    Signal.PROFILES: Profiles,
}


def batch_type(signal: Signal | str) -> type[Batch]:
    return BATCH_TYPES[Signal(signal)]


# --- attribute helpers shared by every component that builds OTLP by hand ---


def any_value(v: Any) -> AnyValue:
    """Python value -> AnyValue (bool before int: bool is an int in Python)."""
    av = AnyValue()
    if isinstance(v, bool):
        av.bool_value = v
    elif isinstance(v, int):
        av.int_value = v
    elif isinstance(v, float):
        av.double_value = v
    elif isinstance(v, bytes):
        av.bytes_value = v
    elif isinstance(v, list | tuple):
        av.array_value.values.extend(any_value(x) for x in v)
    elif isinstance(v, dict):
        av.kvlist_value.values.extend(kv(k, x) for k, x in v.items())
    else:
        av.string_value = str(v)
    return av


def kv(key: str, value: Any) -> KeyValue:
    return KeyValue(key=key, value=any_value(value))


def attrs(d: dict[str, Any]) -> list[KeyValue]:
    return [kv(k, v) for k, v in d.items() if v is not None]


def value_of(av: AnyValue) -> Any:
    kind = av.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value_of(x) for x in av.array_value.values]
    if kind == "kvlist_value":
        return {x.key: value_of(x.value) for x in av.kvlist_value.values}
    return getattr(av, kind)


def attr_dict(kvs: Iterable[KeyValue]) -> dict[str, Any]:
    return {x.key: value_of(x.value) for x in kvs}


def get_attr(kvs: Iterable[KeyValue], key: str) -> Any:
    for x in kvs:
        if x.key == key:
            return value_of(x.value)
    return None


def set_attr(kvs: Any, key: str, value: Any, *, overwrite: bool = True) -> bool:
    """Sets key in a repeated KeyValue field; returns False when it existed and overwrite is off."""
    for x in kvs:
        if x.key == key:
            if not overwrite:
                return False
            x.value.CopyFrom(any_value(value))
            return True
    kvs.append(kv(key, value))
    return True


def iter_resources(batch: Batch) -> Iterator[Any]:
    """Each Resource* entry of a batch, for processors that work on resource attributes."""
    yield from batch.resources()


# --- the pdata rules the collector enforces when it decodes a request -------------------------------

TRACE_ID_SIZE = 16
SPAN_ID_SIZE = 8
PROFILE_ID_SIZE = 16


def _id_error(where: str, value: bytes, size: int) -> str | None:
    n = len(value)
    if n == 0 or n == size:
        return None
    return f"{where} is {n} bytes long, must be {size} (or empty)"


def _exemplar_holders(metric: Any) -> Iterator[tuple[str, Any]]:
    kind = metric.WhichOneof("data")
    if kind in ("gauge", "sum", "histogram", "exponential_histogram"):
        for i, dp in enumerate(getattr(metric, kind).data_points):
            yield f"{kind}.data_points[{i}]", dp


def invalid_ids(batch: Batch) -> str | None:  # noqa: C901 (one flat check per signal and id kind)
    """The first trace, span or profile id of the wrong length, named by its path; None if all are valid.

    The collector's pdata refuses such a request as a whole when it decodes it (TraceID must be 16
    bytes, SpanID 8, either may be empty). Checking at the receiver keeps one sender's bad id from
    being merged into a batch that a strict backend then refuses with everyone's data in it.
    """
    m = batch.peek()
    if batch.signal == Signal.TRACES:
        for i, rs in enumerate(m.resource_spans):
            for j, ss in enumerate(rs.scope_spans):
                for k, sp in enumerate(ss.spans):
                    tl, sl, pl = len(sp.trace_id), len(sp.span_id), len(sp.parent_span_id)
                    if tl in (0, 16) and sl in (0, 8) and pl in (0, 8) and not sp.links:
                        continue
                    w = f"resource_spans[{i}].scope_spans[{j}].spans[{k}]"
                    e = (_id_error(f"{w}.trace_id", sp.trace_id, TRACE_ID_SIZE)
                         or _id_error(f"{w}.span_id", sp.span_id, SPAN_ID_SIZE)
                         or _id_error(f"{w}.parent_span_id", sp.parent_span_id, SPAN_ID_SIZE))
                    for n, ln in enumerate(sp.links):
                        e = e or (_id_error(f"{w}.links[{n}].trace_id", ln.trace_id, TRACE_ID_SIZE)
                                  or _id_error(f"{w}.links[{n}].span_id", ln.span_id, SPAN_ID_SIZE))
                    if e:
                        return e
    elif batch.signal == Signal.LOGS:
        for i, rl in enumerate(m.resource_logs):
            for j, sl_ in enumerate(rl.scope_logs):
                for k, lr in enumerate(sl_.log_records):
                    w = f"resource_logs[{i}].scope_logs[{j}].log_records[{k}]"
                    e = (_id_error(f"{w}.trace_id", lr.trace_id, TRACE_ID_SIZE)
                         or _id_error(f"{w}.span_id", lr.span_id, SPAN_ID_SIZE))
                    if e:
                        return e
    elif batch.signal == Signal.METRICS:
        for i, rm in enumerate(m.resource_metrics):
            for j, sm in enumerate(rm.scope_metrics):
                for k, metric in enumerate(sm.metrics):
                    for w, dp in _exemplar_holders(metric):
                        for n, ex in enumerate(dp.exemplars):
                            at = f"resource_metrics[{i}].scope_metrics[{j}].metrics[{k}].{w}.exemplars[{n}]"
                            e = (_id_error(f"{at}.trace_id", ex.trace_id, TRACE_ID_SIZE)
                                 or _id_error(f"{at}.span_id", ex.span_id, SPAN_ID_SIZE))
                            if e:
                                return e
    elif batch.signal == Signal.PROFILES:
        for i, rp in enumerate(m.resource_profiles):
            for j, sp_ in enumerate(rp.scope_profiles):
                for k, prof in enumerate(sp_.profiles):
                    e = _id_error(f"resource_profiles[{i}].scope_profiles[{j}].profiles[{k}].profile_id",
                                  prof.profile_id, PROFILE_ID_SIZE)
                    if e:
                        return e
        for n, ln in enumerate(m.dictionary.link_table):
            e = (_id_error(f"dictionary.link_table[{n}].trace_id", ln.trace_id, TRACE_ID_SIZE)
                 or _id_error(f"dictionary.link_table[{n}].span_id", ln.span_id, SPAN_ID_SIZE))
            if e:
                return e
    return None
